"""Route health per (provider, provider model): shared rests, retry-after, half-open probes,
and failures that are not the provider's (storage, readiness)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from imagegate.middlewares.metrics import Metrics
from imagegate.proxy.app import create_app
from imagegate.proxy.routing import Router, retry_after_s
from prometheus_client import CollectorRegistry

from tests.conftest import make_config
from tests.e2e.test_routing import two_upstreams
from tests.harness import Clock
from tests.redis_server import free_port, redis_server
from tests.upstreams import openai as openai_mock

BODY = {"model": "gpt-image-1", "prompt": "p"}


async def start(aiohttp_client: Any, config: Any) -> tuple[Any, Clock, CollectorRegistry]:
    clock, registry = Clock(100.0), CollectorRegistry()  # the router's: route health lives there
    router = Router(config, Metrics(registry), clock=clock)
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry(),
                                             router=router))
    return client, clock, registry


def healthy(registry: CollectorRegistry, provider: str, model: str) -> float | None:
    return registry.get_sample_value("imagegate_route_healthy",
                                     {"provider": provider, "model": model})


async def test_two_public_models_on_one_upstream_rest_together(aiohttp_server: Any,
                                                               aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    models["house-image"] = {"routes": [{"provider": "primary", "model": "gpt-image-1"},
                                        {"provider": "backup", "priority": 1,
                                         "model": "gpt-image-1"}]}
    config = make_config({"routing": {"cooldown_s": 30}}, providers=providers, models=models)
    client, clock, registry = await start(aiohttp_client, config)
    first.mode = "server_error"
    for _ in range(3):
        assert (await client.post("/v1/images/generations", json=BODY)).status == 200
    assert len(first.requests) == 3
    resp = await client.post("/v1/images/generations", json={**BODY, "model": "house-image"})
    assert resp.status == 200 and len(second.requests) == 4
    assert len(first.requests) == 3  # the other public model knew the upstream was resting
    assert healthy(registry, "primary", "gpt-image-1") == 0
    series = [(s.labels["provider"], s.labels["model"]) for m in registry.collect()
              if m.name == "imagegate_route_healthy" for s in m.samples]
    # one per (provider, provider model), not one per public model's route
    assert sorted(series) == [("backup", "gpt-image-1"), ("local", "local"),
                              ("primary", "gpt-image-1")]


async def test_retry_after_rests_the_route_that_long(aiohttp_server: Any,
                                                     aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config({"routing": {"cooldown_s": 30}}, providers=providers, models=models)
    client, clock, registry = await start(aiohttp_client, config)
    first.mode, first.retry_after = "rate_limit", "5"
    assert (await client.post("/v1/images/generations", json=BODY)).status == 200
    assert len(first.requests) == 1 and len(second.requests) == 1  # one 429 was enough
    first.mode = "ok"
    clock.now += 4.9
    await client.post("/v1/images/generations", json=BODY)
    assert len(first.requests) == 1  # still resting
    clock.now += 0.2
    resp = await client.post("/v1/images/generations", json=BODY)
    assert resp.status == 200 and len(first.requests) == 2 and len(second.requests) == 2


async def test_a_503_retry_after_longer_than_the_cooldown_wins(aiohttp_server: Any,
                                                               aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config({"routing": {"cooldown_s": 1}}, providers=providers, models=models)
    client, clock, registry = await start(aiohttp_client, config)
    first.mode = second.mode = "unavailable"
    first.retry_after = second.retry_after = "120"
    resp = await client.post("/v1/images/generations", json=BODY)
    assert resp.status == 502
    resp = await client.post("/v1/images/generations", json=BODY)
    assert resp.status == 503 and int(resp.headers["retry-after"]) == 120


async def primary_rested(aiohttp_server: Any, aiohttp_client: Any) -> tuple[Any, ...]:
    """Two routes (cooldown 30 s) whose primary has just failed three times in a row."""
    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config({"routing": {"cooldown_s": 30}}, providers=providers, models=models)
    client, clock, registry = await start(aiohttp_client, config)
    first.mode = "server_error"
    for _ in range(3):
        await client.post("/v1/images/generations", json=BODY)
    return first, second, client, clock, registry


async def test_half_open_lets_exactly_one_probe_through(aiohttp_server: Any,
                                                        aiohttp_client: Any) -> None:
    first, second, client, clock, registry = await primary_rested(aiohttp_server,
                                                                  aiohttp_client)
    assert healthy(registry, "primary", "gpt-image-1") == 0
    first.mode, first.delay_s = "ok", 0.3
    clock.now += 31
    backup_before = len(second.requests)
    answers = await asyncio.gather(*(client.post("/v1/images/generations", json=BODY)
                                     for _ in range(4)))
    assert [r.status for r in answers] == [200] * 4
    assert len(first.requests) == 4  # three failures, then one probe
    assert len(second.requests) == backup_before + 3  # the others kept to the backup
    assert healthy(registry, "primary", "gpt-image-1") == 1  # the probe closed the circuit
    first.delay_s = 0
    await asyncio.gather(*(client.post("/v1/images/generations", json=BODY) for _ in range(3)))
    assert len(first.requests) == 7 and len(second.requests) == backup_before + 3


async def test_a_failed_probe_rests_the_route_again_at_once(aiohttp_server: Any,
                                                            aiohttp_client: Any) -> None:
    first, second, client, clock, registry = await primary_rested(aiohttp_server,
                                                                  aiohttp_client)
    clock.now += 31
    await client.post("/v1/images/generations", json=BODY)  # the probe, failing
    assert len(first.requests) == 4
    clock.now += 29
    await client.post("/v1/images/generations", json=BODY)
    assert len(first.requests) == 4


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("5") == 5.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0
    assert retry_after_s("soon") is None and retry_after_s("-3") is None
    assert retry_after_s("99999999") == 3600.0


async def test_redis_storage_down_then_up_leaves_route_health_alone(
        aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    port = free_port()
    with redis_server(tmp_path, port) as url:
        config = make_config({"routing": {"cooldown_s": 30},
                              "state": {"redis_url": url},
                              "storage": {"backend": "redis", "signing_secret": "x"}},
                             providers=providers, models=models)
        client, clock, registry = await start(aiohttp_client, config)
        url_body = {**BODY, "response_format": "url"}
        assert (await client.post("/v1/images/generations", json=url_body)).status == 200
    for _ in range(4):  # Redis is down: the images cannot be hosted
        resp = await client.post("/v1/images/generations", json=url_body)
        error = (await resp.json())["error"]
        assert resp.status == 503 and error["code"] == "upstream_unavailable"
        assert int(resp.headers["retry-after"]) >= 1
    assert len(first.requests) == 5 and second.requests == []  # never paid for twice
    assert healthy(registry, "primary", "gpt-image-1") == 1
    with redis_server(tmp_path, port):
        resp = await client.post("/v1/images/generations", json=url_body)
        assert resp.status == 200 and len(first.requests) == 6


async def test_an_unwritable_image_directory_is_503_not_500(gateway: Any,
                                                            tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    client = await gateway(make_config({"storage": {"path": str(blocker / "images")}}))
    resp = await client.post("/v1/images/generations", json={
        "model": "local", "prompt": "p", "size": "16x16", "response_format": "url"})
    assert resp.status == 503 and resp.headers["retry-after"]
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_readyz_with_redis_down_open_stays_ready_closed_does_not(
        gateway: Any, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    open_ = await gateway(make_config({"state": {"backend": "redis", "redis_url": dead}}))
    resp = await open_.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "degraded", "degraded": ["redis (state)"]}
    closed = await gateway(make_config({"state": {"backend": "redis", "redis_url": dead,
                                                  "on_redis_error": "closed"}}))
    resp = await closed.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "unavailable"
    assert openai_mock.API_KEY  # the mock module stays importable for the shared fixtures


async def test_the_gateways_own_cap_is_not_retried_on_another_provider(
        aiohttp_server: Any, aiohttp_client: Any) -> None:
    first, second, providers, models = await two_upstreams(aiohttp_server)
    providers["primary"]["max_concurrency"] = 1
    config = make_config(providers=providers, models=models)
    client, clock, registry = await start(aiohttp_client, config)
    first.delay_s = 0.3
    answers = await asyncio.gather(*(client.post("/v1/images/generations", json=BODY)
                                     for _ in range(3)))
    assert sorted(r.status for r in answers) == [200, 429, 429]
    busy = [r for r in answers if r.status == 429]
    assert [(await r.json())["error"]["code"] for r in busy] == ["upstream_busy"] * 2
    assert second.requests == []  # never paid for on the backup
    assert healthy(registry, "primary", "gpt-image-1") == 1


async def test_a_probe_whose_client_hangs_up_is_free_for_the_next_request(
        aiohttp_server: Any, aiohttp_client: Any) -> None:
    import aiohttp as aiohttp_lib

    first, second, providers, models = await two_upstreams(aiohttp_server)
    config = make_config({"routing": {"cooldown_s": 30}}, providers=providers, models=models)
    clock, registry = Clock(100.0), CollectorRegistry()
    router = Router(config, Metrics(registry), clock=clock)
    server = await aiohttp_server(create_app(config, registry=CollectorRegistry(),
                                             router=router))
    first.mode = "server_error"
    async with aiohttp_lib.ClientSession() as session:
        url = server.make_url("/v1/images/generations")
        for _ in range(3):
            await (await session.post(url, json=BODY)).read()
        clock.now += 31
        first.mode, first.delay_s = "ok", 1.0
        try:  # the probe's client hangs up while the probe runs
            await session.post(url, json=BODY, timeout=aiohttp_lib.ClientTimeout(total=0.2))
        except TimeoutError:
            pass
        await asyncio.sleep(0.1)  # the gateway notices the hang-up (no window is waited for)
        first.delay_s = 0
        resp = await session.post(url, json=BODY)
        assert resp.status == 200 and resp.headers["x-imagegate-provider"] == "primary"
    assert len(first.requests) == 5  # three failures, the abandoned probe, the next probe
    assert healthy(registry, "primary", "gpt-image-1") == 1
