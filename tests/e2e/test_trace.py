"""Answers and logs that say what happened: the request id both ways, the provider's words."""
from __future__ import annotations

from typing import Any

import aiohttp
from structlog.testing import capture_logs

import imagegate
from tests.conftest import make_config
from tests.e2e.test_routing import two_upstreams
from tests.upstreams import openai as openai_mock


async def test_the_request_id_goes_upstream_and_the_upstream_id_is_logged(
        aiohttp_server: Any, gateway: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    first.mode = "rate_limit"
    client = await gateway(make_config(providers=providers, models=models))
    with capture_logs() as logs:
        resp = await client.post("/v1/images/generations", json={
            "model": "gpt-image-1", "prompt": "p"}, headers={"x-request-id": "trace-me-42"})
    assert resp.status == 200 and resp.headers["x-request-id"] == "trace-me-42"
    assert first.last.headers["X-Client-Request-Id"] == "trace-me-42"  # OpenAI's header
    assert second.last.headers["X-Client-Request-Id"] == "trace-me-42"
    # the gateway names itself upstream, not the Python and aiohttp versions it runs on
    assert second.last.headers["User-Agent"] == f"imagegate/{imagegate.__version__}"
    attempts = [e for e in logs if e["event"] == "upstream"]
    assert [a["provider"] for a in attempts] == ["primary", "backup"]
    failed, served = attempts
    assert failed["upstream_request_id"] == first.ids[-1]
    assert failed["outcome"] == "rate_limited" and failed["status"] == 429
    assert failed["error_code"] == "upstream_rate_limited"
    assert failed["error"] == "Rate limit exceeded for images per minute."
    assert served["upstream_request_id"] == second.ids[-1] and "error" not in served


async def test_the_logged_provider_message_is_scrubbed(aiohttp_server: Any,
                                                       gateway: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    first.mode = "auth"  # OpenAI echoes the start of the key it refused
    providers["primary"]["api_key"] = "sk-wrong-secret-value"
    client = await gateway(make_config(providers=providers, models=models))
    with capture_logs() as logs:
        resp = await client.post("/v1/images/generations", json={
            "model": "gpt-image-1", "prompt": "p"})
    assert resp.status == 200
    failed = next(e for e in logs if e["event"] == "upstream" and e["provider"] == "primary")
    assert failed["error_code"] == "upstream_auth_failed"
    assert failed["error"].startswith("Incorrect API key provided: [redacted]")
    assert "sk-" not in repr(logs) and openai_mock.API_KEY not in repr(logs)


async def test_local_renders_log_their_failure(gateway: Any) -> None:
    client = await gateway()
    image = openai_mock.png_bytes()  # no alpha channel: not a mask
    form = aiohttp.FormData()
    for name, value in (("model", "local"), ("prompt", "p")):
        form.add_field(name, value)
    form.add_field("image", image, filename="a.png", content_type="image/png")
    form.add_field("mask", image, filename="m.png", content_type="image/png")
    with capture_logs() as logs:
        resp = await client.post("/v1/images/edits", data=form)
    assert resp.status == 400
    line = next(e for e in logs if e["event"] == "upstream")
    assert line["error_code"] == "invalid_value" and "alpha channel" in line["error"]


async def test_adapted_providers_ids_come_from_their_answers(aiohttp_server: Any,
                                                             gateway: Any) -> None:
    from tests.upstreams import gemini as gemini_mock
    from tests.upstreams import openrouter as or_mock

    orr, gem = or_mock.Recorder(), gemini_mock.Recorder()
    or_url = str((await aiohttp_server(or_mock.make_app(orr))).make_url("")).rstrip("/")
    gem_url = str((await aiohttp_server(gemini_mock.make_app(gem))).make_url("")).rstrip("/")
    client = await gateway(make_config(
        providers={"openrouter": {"type": "openrouter", "base_url": or_url,
                                  "api_key": or_mock.API_KEY},
                   "gemini": {"type": "gemini", "base_url": gem_url,
                              "api_key": gemini_mock.API_KEY}},
        models={"or": {"routes": [{"provider": "openrouter",
                                   "model": "google/gemini-3-pro-image"}]},
                "gem": {"routes": [{"provider": "gemini", "model": "gemini-3-pro-image"}]}}))
    with capture_logs() as logs:
        for model in ("or", "gem"):
            resp = await client.post("/v1/images/generations", json={
                "model": model, "prompt": "p"}, headers={"x-request-id": f"ours-{model}"})
            assert resp.status == 200, await resp.text()
    ids = {e["provider"]: e["upstream_request_id"] for e in logs if e["event"] == "upstream"}
    assert ids == {"openrouter": "gen-mock", "gemini": "mock-response"}
    sent = [{k.lower(): v for k, v in r.requests[-1].headers.items()} for r in (orr, gem)]
    assert [h["x-request-id"] for h in sent] == ["ours-or", "ours-gem"]  # nothing better known
