"""Routes: fallback to the next tier, cooldown of failing routes, hang-ups cancel upstream."""
from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from imagegate.middlewares.metrics import Metrics
from imagegate.proxy.app import create_app
from imagegate.proxy.routing import Router
from PIL import Image
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.conftest import make_config
from tests.harness import Clock
from tests.redis_server import free_port
from tests.schemas import checked_sdk
from tests.upstreams import openai as openai_mock


async def two_upstreams(aiohttp_server: Any) -> tuple[Any, Any, dict, dict]:
    first, second = openai_mock.Recorder(), openai_mock.Recorder()
    urls = [str((await aiohttp_server(openai_mock.make_app(r))).make_url("")).rstrip("/")
            for r in (first, second)]
    providers = {name: {"type": "openai", "base_url": url, "api_key": openai_mock.API_KEY}
                 for name, url in zip(("primary", "backup"), urls, strict=True)}
    models = {"gpt-image-1": {"routes": [{"provider": "primary"},
                                         {"provider": "backup", "priority": 1}]}}
    return first, second, providers, models


async def test_failover_then_cooldown_then_recovery(aiohttp_server: Any,
                                                    aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config({"routing": {"cooldown_s": 30}}, providers=providers, models=models)
    clock, registry = Clock(100.0), CollectorRegistry()
    router = Router(config, Metrics(CollectorRegistry()), clock=clock)
    client = await aiohttp_client(create_app(config, registry=registry, router=router))
    first.mode = "server_error"
    for _ in range(3):
        resp = await client.post("/v1/images/generations", json={"model": "gpt-image-1",
                                                                 "prompt": "p"})
        assert resp.status == 200
    assert len(first.requests) == 3 and len(second.requests) == 3
    await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p"})
    assert len(first.requests) == 3  # resting: not tried
    first.mode, clock.now = "ok", clock.now + 31
    await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p"})
    assert len(first.requests) == 4
    assert registry.get_sample_value("imagegate_retries_total", {"provider": "backup"}) == 3


async def test_every_route_resting_is_503_with_retry_after(aiohttp_server: Any,
                                                           aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config({"routing": {"cooldown_s": 30}}, providers=providers, models=models)
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry(),
                                             router=Router(config, Metrics(CollectorRegistry()),
                                                           clock=Clock(100.0))))
    first.mode = second.mode = "server_error"
    for _ in range(3):
        resp = await client.post("/v1/images/generations", json={"model": "gpt-image-1",
                                                                 "prompt": "p"})
        assert resp.status == 502
    resp = await client.post("/v1/images/generations", json={"model": "gpt-image-1",
                                                             "prompt": "p"})
    assert resp.status == 503 and int(resp.headers["retry-after"]) == 30


async def test_client_hangup_is_499_and_cancels_the_upstream(aiohttp_server: Any,
                                                             openai_upstream: Any) -> None:
    recorder, base_url = openai_upstream
    recorder.delay_s = 2.0
    providers = {"openai": {"type": "openai", "base_url": base_url,
                            "api_key": openai_mock.API_KEY}}
    models = {"gpt-image-1": {"routes": [{"provider": "openai"}]}}
    app = create_app(make_config(providers=providers, models=models),
                     registry=CollectorRegistry())
    server = await aiohttp_server(app)  # test servers cancel handlers on hang-up, as serve does
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            try:
                await session.post(server.make_url("/v1/images/generations"),
                                   json={"model": "gpt-image-1", "prompt": "p"},
                                   timeout=aiohttp.ClientTimeout(total=0.3))
            except TimeoutError:
                pass
        await asyncio.sleep(0.2)
    access = [e for e in logs if e["event"] == "request"]
    upstream = [e for e in logs if e["event"] == "upstream"]
    assert access[0]["status"] == 499 and upstream[0]["outcome"] == "cancelled"


async def test_sdk_sees_502_when_the_only_route_fails(gateway: Any, openai_upstream: Any) -> None:
    recorder, base_url = openai_upstream
    recorder.mode = "server_error"
    providers = {"openai": {"type": "openai", "base_url": base_url, "api_key": "wrong"}}
    client = await gateway(make_config(providers=providers, models={
        "gpt-image-1": {"routes": [{"provider": "openai"}]}}))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    try:
        await sdk.images.generate(model="gpt-image-1", prompt="p")
    except openai.InternalServerError as exc:
        assert exc.status_code == 502 and exc.body["code"] == "upstream_auth_failed"
        assert "Incorrect API key" not in str(exc.body)
    else:
        raise AssertionError("expected a 502")
    finally:
        await sdk.close()


async def test_unreachable_and_slow_providers(gateway: Any, openai_upstream: Any) -> None:
    recorder, base_url = openai_upstream
    recorder.delay_s = 1.0
    closed = f"http://127.0.0.1:{free_port()}"
    providers = {
        "down": {"type": "openai", "base_url": closed, "api_key": "k"},
        "slow": {"type": "openai", "base_url": base_url, "api_key": openai_mock.API_KEY,
                 "timeout_s": 0.2},
    }
    models = {"down-model": {"routes": [{"provider": "down"}]},
              "slow-model": {"routes": [{"provider": "slow"}]}}
    client = await gateway(make_config(providers=providers, models=models))
    resp = await client.post("/v1/images/generations", json={"model": "down-model", "prompt": "p"})
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "upstream_unavailable"
    resp = await client.post("/v1/images/generations", json={"model": "slow-model", "prompt": "p"})
    assert resp.status == 504 and (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_unexpected_failures_are_a_generic_500(gateway: Any, monkeypatch: Any) -> None:
    import dataclasses

    from imagegate.adapters import ADAPTERS

    def broken(req: Any) -> Any:
        raise RuntimeError("internal detail /srv/secret")

    monkeypatch.setitem(ADAPTERS, "local", dataclasses.replace(ADAPTERS["local"], render=broken))
    client = await gateway(make_config())
    with capture_logs() as logs:
        resp = await client.post("/v1/images/generations", json={"model": "local", "prompt": "p"})
    body = await resp.json()
    assert resp.status == 500 and body["error"]["code"] == "server_error"
    assert "secret" not in str(body)
    assert any(e["event"] == "unhandled_error" and e.get("exc_info") for e in logs)


async def test_our_concurrency_cap_does_not_rest_a_healthy_route(gateway: Any,
                                                                 openai_upstream: Any) -> None:
    recorder, base_url = openai_upstream
    recorder.delay_s = 0.3
    providers = {"openai": {"type": "openai", "base_url": base_url,
                            "api_key": openai_mock.API_KEY, "max_concurrency": 1}}
    client = await gateway(make_config(providers=providers, models={
        "gpt-image-1": {"routes": [{"provider": "openai"}]}}))

    async def one() -> int:
        resp = await client.post("/v1/images/generations", json={"model": "gpt-image-1",
                                                                 "prompt": "p"})
        return resp.status

    statuses = await asyncio.gather(*(one() for _ in range(5)))
    assert sorted(statuses) == [200, 429, 429, 429, 429]
    assert await one() == 200  # not resting


async def slow_failing_ark(aiohttp_server: Any) -> str:
    async def generations(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.json_response({"error": {"code": "InternalServiceError", "message": "x"}},
                                 status=500)

    app = web.Application()
    app.router.add_post("/images/generations", generations)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


async def test_streams_and_edits_fall_back_over_adapted_routes(aiohttp_server: Any,
                                                               gateway: Any) -> None:
    base = await slow_failing_ark(aiohttp_server)
    config = make_config(
        {"server": {"stream_keepalive_s": 0.05}},
        providers={"ark": {"type": "ark", "base_url": base, "api_key": "k"}},
        models={"pics": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0"},
                                    {"provider": "local", "priority": 1}]}})
    client = await gateway(config)
    resp = await client.post("/v1/images/generations", json={
        "model": "pics", "prompt": "p", "size": "16x16", "stream": True})
    text = await resp.text()
    assert resp.status == 200 and ": keep-alive" in text
    assert "event: image_generation.completed" in text and "event: error" not in text
    assert client.registry.get_sample_value("imagegate_retries_total",
                                            {"provider": "local"}) == 1
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    result = await sdk.images.edit(model="pics", prompt="p",
                                   image=("a.png", openai_mock.PNG, "image/png"))
    await sdk.close()
    assert len(result.data) == 1  # Ark failed after the files were read: local served them
    assert client.registry.get_sample_value("imagegate_upstream_requests_total", {
        "provider": "ark", "model": "doubao-seedream-4-0", "outcome": "server_error"}) == 2


async def test_a_route_that_cannot_apply_a_mask_passes_to_one_that_can(
        aiohttp_server: Any, gateway: Any) -> None:
    from tests.upstreams import gemini as gemini_mock

    base = str((await aiohttp_server(gemini_mock.make_app(gemini_mock.Recorder())))
               .make_url("")).rstrip("/")
    providers = {"gemini": {"type": "gemini", "base_url": base, "api_key": gemini_mock.API_KEY}}
    models = {"both": {"routes": [{"provider": "gemini", "model": "gemini-3-pro-image"},
                                  {"provider": "local", "priority": 1}]},
              "gemini-only": {"routes": [{"provider": "gemini",
                                          "model": "gemini-3-pro-image"}]}}
    client = await gateway(make_config(providers=providers, models=models))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    png, out = openai_mock.PNG, io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(out, "PNG")
    try:
        result = await sdk.images.edit(model="both", prompt="p", image=("a.png", png, "image/png"),
                                       mask=("m.png", out.getvalue(), "image/png"))
        assert len(result.data) == 1
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.images.edit(model="gemini-only", prompt="p",
                                  image=("a.png", png, "image/png"),
                                  mask=("m.png", png, "image/png"))
        assert info.value.param == "mask"
    finally:
        await sdk.close()


async def test_a_failed_download_keeps_the_other_images(aiohttp_server: Any,
                                                        gateway: Any) -> None:
    from tests.upstreams import ark as ark_mock

    recorder, downloads = ark_mock.Recorder(mode="url"), [0]

    @web.middleware
    async def every_other_download_fails(request: web.Request, handler: Any) -> Any:
        if request.path.startswith("/files/"):
            downloads[0] += 1
            if downloads[0] % 2 == 0:
                return web.Response(status=500)
        return await handler(request)

    app = ark_mock.make_app(recorder)
    app.middlewares.append(every_other_download_fails)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    client = await gateway(make_config(
        providers={"ark": {"type": "ark", "base_url": base, "api_key": ark_mock.API_KEY}},
        models={"s": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0"}]}}))
    resp = await client.post("/v1/images/generations", json={"model": "s", "prompt": "p", "n": 2})
    assert resp.status == 200 and resp.headers["x-imagegate-failed-images"] == "1"
    assert len((await resp.json())["data"]) == 1


async def test_requests_an_adapter_refuses_reach_a_later_openai_route(
        aiohttp_server: Any, gateway: Any, openai_upstream: Any) -> None:
    from tests.upstreams import ark as ark_mock

    recorder, base = openai_upstream
    ark_base = str((await aiohttp_server(ark_mock.make_app(ark_mock.Recorder())))
                   .make_url("")).rstrip("/")
    client = await gateway(make_config(
        providers={"ark": {"type": "ark", "base_url": ark_base, "api_key": ark_mock.API_KEY},
                   "openai": {"type": "openai", "base_url": base,
                              "api_key": openai_mock.API_KEY}},
        models={"m": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0"},
                                 {"provider": "openai", "model": "gpt-image-1",
                                  "priority": 1}]}}))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    png = openai_mock.PNG
    try:  # Ark cannot apply a mask: the files, read for Ark, are sent on to OpenAI
        await sdk.images.edit(model="m", prompt="p", n=2, image=("a.png", png, "image/png"),
                              mask=("m.png", png, "image/png"))
        parts = {p.name: p for p in recorder.last.parts}
        assert parts["model"].text == "gpt-image-1" and parts["n"].text == "2"
        assert parts["image"].filename == "a.png" and parts["mask"].size == len(png)
        await sdk.post("/images/edits", cast_to=object, body={  # file ids: only OpenAI reads them
            "model": "m", "prompt": "p", "images": [{"file_id": "file-1"}]})
        assert recorder.last.json["images"] == [{"file_id": "file-1"}]
    finally:
        await sdk.close()


async def test_local_renders_keep_to_max_concurrency(gateway: Any) -> None:
    client = await gateway(make_config({"providers": {
        "local": {"type": "local", "max_concurrency": 1}}}))

    async def one() -> int:
        resp = await client.post("/v1/images/generations", json={
            "model": "local", "prompt": "p", "size": "2048x2048"})
        return resp.status

    statuses = sorted(await asyncio.gather(*(one() for _ in range(3))))
    assert statuses[0] == 200 and statuses[-1] == 429


async def test_answers_say_which_provider_served_them_and_after_how_many_attempts(
        aiohttp_server: Any, aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config(providers=providers, models=models)
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    raw = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="p")
    assert (raw.headers["x-imagegate-provider"], raw.headers["x-imagegate-attempts"]) == (
        "primary", "1")
    first.mode = "server_error"
    raw = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="p")
    assert (raw.headers["x-imagegate-provider"], raw.headers["x-imagegate-attempts"]) == (
        "backup", "2")
    assert raw.parse().data[0].b64_json
    stream = await sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="p",
                                                         stream=True)
    assert stream.headers["x-imagegate-provider"] == "backup"  # a relayed stream names it too
    await sdk.close()
