"""GET /status.json and /status: what an operator reads off a gateway that served traffic;
server.admin_keys guards them and /metrics."""
from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from imagegate.proxy.status import quantile
from openai import AsyncOpenAI, InternalServerError

from tests.conftest import GATEWAY_KEY, make_config, openai_models
from tests.redis_server import free_port

ADMIN_KEY = "ig-admin-secret"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def traffic_config(tmp_path: Any, openai_url: str, **server: Any) -> Any:
    providers, _ = openai_models(openai_url)
    providers["dead"] = {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                         "api_key": "sk-x", "max_concurrency": 3}
    models = {
        "local": {"routes": [{"provider": "local", "price": {"per_image": 0.01}}]},
        "gpt-image-1": {"routes": [{"provider": "openai"}]},
        "flaky": {"routes": [{"provider": "dead", "model": "gpt-image-1", "weight": 2},
                             {"provider": "local", "priority": 1}], "aliases": ["fl"]},
        "broken": {"routes": [{"provider": "dead", "model": "dall-e-3"}]},
    }
    keys = [{"id": "team-a", "key": GATEWAY_KEY, "budget": {"usd_per_day": 1, "usd_per_month": 5}},
            {"id": "team-b", "key": "ig-other"}]
    return make_config({"auth": {"keys": keys}, "server": server, "routing": {"cooldown_s": 60}},
                       tmp_path=tmp_path, providers=providers, models=models)


def sdk(client: Any, key: str = GATEWAY_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


async def test_status_json_after_traffic(gateway: Any, tmp_path: Any,
                                         openai_upstream: Any) -> None:
    _, url = openai_upstream
    client = await gateway(traffic_config(tmp_path, url))
    api = sdk(client)
    for _ in range(3):
        await api.images.generate(model="local", prompt="a kite", size="256x256", n=2)
    await api.images.generate(model="gpt-image-1", prompt="a kite")
    for _ in range(3):  # three failures in a row rest the pair (dead, dall-e-3)
        with pytest.raises(InternalServerError):
            await api.images.generate(model="broken", prompt="a kite")
    await api.close()
    status = await (await client.get("/status.json")).json()

    models = {m["name"]: m for m in status["models"]}
    assert list(models) == ["local", "gpt-image-1", "flaky", "broken"]
    assert models["flaky"]["aliases"] == ["fl"]
    flaky = models["flaky"]["routes"]
    assert [(r["provider"], r["provider_model"], r["priority"], r["weight"]) for r in flaky] == [
        ("dead", "gpt-image-1", 0, 2.0), ("local", "flaky", 1, 1.0)]
    assert {r["state"] for r in flaky} == {"healthy"}
    [broken] = models["broken"]["routes"]
    assert broken["state"] == "resting" and broken["resting_until"] > status["generated_at"]
    assert broken["last_failure"] == "upstream_unavailable"

    local = models["local"]
    assert local["requests_per_min"] > 0 and local["images_per_min"] == pytest.approx(
        2 * local["requests_per_min"])
    assert 0 < local["p50_s"] <= local["p95_s"]
    assert models["broken"]["error_share"] == {"502": 1.0}
    assert models["gpt-image-1"]["error_share"] == {}

    keys = {k["id"]: k for k in status["keys"]}
    assert keys["team-a"] == {"id": "team-a", "requests_today": 7, "images_today": 7,
                              "cost_usd_today": 0.06,  # 6 images at $0.01; gpt-image-1 unpriced
                              "budget": {"usd_per_day": 1.0, "usd_per_month": 5.0},
                              "budget_left": {"usd_per_day": 0.94, "usd_per_month": 4.94}}
    assert keys["team-b"]["requests_today"] == 0
    providers = {p["name"]: p for p in status["providers"]}
    assert providers["dead"] == {"name": "dead", "type": "openai", "in_flight": 0,
                                 "max_concurrency": 3}
    assert status["workers"] == 1 and status["uptime_s"] >= 0
    assert GATEWAY_KEY not in str(status) and "sk-" not in str(status)


async def test_in_flight_provider_calls_show(gateway: Any, tmp_path: Any,
                                             openai_upstream: Any) -> None:
    recorder, url = openai_upstream
    recorder.delay_s = 0.5
    client = await gateway(traffic_config(tmp_path, url))
    api = sdk(client)
    slow = asyncio.create_task(api.images.generate(model="gpt-image-1", prompt="x"))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if recorder.requests:
            break
    status = await (await client.get("/status.json")).json()
    assert {p["name"]: p["in_flight"] for p in status["providers"]}["openai"] == 1
    await slow
    await api.close()


async def test_status_page_is_html_that_refreshes_itself(gateway: Any, tmp_path: Any,
                                                         openai_upstream: Any) -> None:
    _, url = openai_upstream
    client = await gateway(traffic_config(tmp_path, url))
    resp = await client.get("/status")
    page = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert '<meta http-equiv="refresh" content="5">' in page and "<script" not in page
    assert "data-model='flaky'" in page and "team-a" in page


@pytest.mark.parametrize("path", ["/status", "/status.json", "/metrics"])
async def test_admin_keys_guard_status_and_metrics(gateway: Any, tmp_path: Any, path: str,
                                                   openai_upstream: Any) -> None:
    _, url = openai_upstream
    client = await gateway(traffic_config(tmp_path, url, admin_keys=[digest(ADMIN_KEY)]))
    for headers in ({}, {"Authorization": f"Bearer {GATEWAY_KEY}"},  # an API key is no admin key
                    {"Authorization": "Bearer wrong"}):
        resp = await client.get(path, headers=headers)
        body = await resp.json()
        assert resp.status == 401 and body["error"]["code"] == "invalid_api_key"
    resp = await client.get(path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status == 200
    assert (await client.get("/healthz")).status == 200  # probes stay open


async def test_without_admin_keys_status_and_metrics_are_open(gateway: Any, tmp_path: Any,
                                                              openai_upstream: Any) -> None:
    _, url = openai_upstream
    client = await gateway(traffic_config(tmp_path, url))
    for path in ("/status", "/status.json", "/metrics"):
        assert (await client.get(path)).status == 200


def test_admin_keys_must_be_sha256_digests(tmp_path: Any) -> None:
    from imagegate.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"server.admin_keys\[0\]"):
        make_config({"server": {"admin_keys": ["plain-key"]}})


def test_quantiles_interpolate_like_prometheus() -> None:
    buckets = {0.1: 0.0, 0.5: 50.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.25, buckets) == pytest.approx(0.3)
    assert quantile(0.95, buckets) == pytest.approx(0.95)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
