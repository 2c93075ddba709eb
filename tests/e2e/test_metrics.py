"""/metrics serves DESIGN's families; labels stay bounded whatever clients send."""
from __future__ import annotations

from typing import Any

from tests.conftest import make_config

FAMILIES = ("requests_total", "request_duration_seconds", "upstream_requests_total",
            "upstream_duration_seconds", "images_total", "tokens_total", "in_flight_requests",
            "rate_limited_total", "retries_total", "route_healthy")


async def test_families_and_bounded_labels(gateway: Any, tmp_path: Any) -> None:
    client = await gateway(make_config(tmp_path=tmp_path))
    await client.post("/v1/images/generations", json={"model": "local", "prompt": "p",
                                                      "size": "16x16", "n": 2})
    for i in range(3):  # unknown models and paths must not mint new label values
        await client.post("/v1/images/generations", json={"model": f"evil-{i}", "prompt": "p"})
        await client.get(f"/v1/random/{i}")
    text = await (await client.get("/metrics")).text()
    for family in FAMILIES:
        assert f"# TYPE imagegate_{family.removesuffix('_total')}" in text, family
    assert "evil" not in text and "/v1/random" not in text
    reg = client.registry
    assert reg.get_sample_value("imagegate_images_total",
                                {"model": "local", "provider": "local"}) == 2
    assert reg.get_sample_value("imagegate_requests_total", {
        "endpoint": "/v1/images/generations", "model": "-", "key": "-", "status": "404"}) == 3
    assert reg.get_sample_value("imagegate_upstream_requests_total", {
        "provider": "local", "model": "local", "outcome": "ok"}) == 1  # one render, n=2
    assert reg.get_sample_value("imagegate_route_healthy",
                                {"provider": "local", "model": "local"}) == 1
    assert "imagegate_in_flight_requests 0.0" in text  # the scrape does not count itself
    assert "_created" not in text  # no creation-time series doubling the output
    assert reg.get_sample_value("imagegate_in_flight_requests") == 0
