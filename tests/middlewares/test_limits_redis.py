"""Limits, slots and budgets shared through a real redis-server; Redis failing and coming back."""
from __future__ import annotations

import asyncio
from typing import Any

from imagegate.middlewares.limits import Plan, Slot
from structlog.testing import capture_logs

from tests.harness import Clock
from tests.middlewares.test_ratelimit import gen
from tests.middlewares.usage_app import DAY_START, usage_app, usage_config
from tests.redis_server import free_port, redis_server


async def pair(aiohttp_client: Any, url: str, entry: dict[str, Any], clock: Clock,
               price: dict[str, Any] | None = None, on_error: str = "open",
               lease_ttl_s: float = 60.0) -> list[Any]:
    """Two gateways (two machines, or two workers) on the same Redis."""
    config = usage_config({"keys": [{"id": "team-a", "key": "team-a", **entry}]}, price,
                          {"backend": "redis", "redis_url": url, "on_redis_error": on_error})
    clients = []
    for _ in range(2):
        app, script, metrics, limiter = usage_app(config, clock, lease_ttl_s=lease_ttl_s)
        client = await aiohttp_client(app)
        client.script, client.limiter = script, limiter
        limiter.retry_s = 0.0  # try Redis again at once (no waiting in tests)
        clients.append(client)
    return clients


async def test_two_gateways_split_one_limit(aiohttp_client: Any, tmp_path: Any) -> None:
    clock = Clock(DAY_START)
    with redis_server(tmp_path) as url:
        a, b = await pair(aiohttp_client, url, {"limits": {"requests_per_minute": 3,
                                                           "images_per_minute": 4}}, clock)
        assert (await gen(a, n=2)).status == 200
        resp = await gen(b)
        assert resp.status == 200 and resp.headers["x-ratelimit-remaining-requests"] == "1"
        assert resp.headers["x-ratelimit-remaining-images"] == "1"
        refused = await gen(a, n=2)  # images: 3 of 4 used on the two gateways together
        assert refused.status == 429 and "images_per_minute" in (await refused.json())[
            "error"]["message"]
        assert refused.headers["x-ratelimit-remaining-requests"] == "1"  # it consumed nothing
        assert (await gen(b)).status == 200
        refused = await gen(a)
        assert refused.status == 429 and refused.headers["retry-after"] == "60"
        clock.now += 60
        assert (await gen(a)).status == 200


async def test_slots_are_shared_and_a_dead_holders_lease_expires(aiohttp_client: Any,
                                                                 tmp_path: Any) -> None:
    clock = Clock(DAY_START)
    with redis_server(tmp_path) as url:
        a, b = await pair(aiohttp_client, url, {"limits": {"concurrent_requests": 1}}, clock,
                          lease_ttl_s=30)
        held = asyncio.create_task(gen(a, prompt="hang"))
        while a.script.entered == 0:
            await asyncio.sleep(0.005)
        assert (await gen(b)).status == 429
        a.script.release.set()
        assert (await held).status == 200
        assert (await gen(b)).status == 200  # released through Redis
        # a process that dies holding a slot never releases it: its lease runs out
        slot = Slot("concurrent_requests", "imagegate:use:{team-a}:con", 1)
        decision = await a.limiter.redis.admit(Plan([], [slot], []), "dead-ticket", clock.now)
        assert decision.refused is None
        assert (await gen(b)).status == 429
        clock.now += 31
        assert (await gen(b)).status == 200


async def test_a_budget_is_shared_and_resets_at_midnight(aiohttp_client: Any,
                                                         tmp_path: Any) -> None:
    clock = Clock(1_796_083_200.0 + 23.5 * 3600)  # 2026-12-01T23:30:00Z
    with redis_server(tmp_path) as url:
        a, b = await pair(aiohttp_client, url, {"budget": {"usd_per_day": 0.5},
                                                "limits": {"concurrent_requests": 2}}, clock,
                          {"per_image": 0.2})
        assert (await gen(a)).headers["x-imagegate-budget-remaining-usd"] == "0.3"
        assert (await gen(b, prompt="fail")).status == 502  # costs nothing
        resp = await gen(b)
        assert resp.status == 200 and resp.headers["x-imagegate-budget-remaining-usd"] == "0.1"
        refused = await gen(a)
        assert refused.status == 429 and refused.headers["retry-after"] == "1800"
        assert (await refused.json())["error"]["code"] == "budget_exceeded"
        clock.now += 1800
        assert (await gen(a)).headers["x-imagegate-budget-remaining-usd"] == "0.3"


async def test_redis_down_open_falls_back_to_memory_and_recovers(aiohttp_client: Any,
                                                                 tmp_path: Any) -> None:
    clock, port = Clock(DAY_START), free_port()
    with redis_server(tmp_path, port) as url:
        a, b = await pair(aiohttp_client, url, {"limits": {"requests_per_minute": 2}}, clock)
        assert (await gen(a)).status == 200
        assert (await gen(b)).status == 200
        assert (await gen(a)).status == 429
    with capture_logs() as logs:  # Redis is gone: each process counts on its own
        assert (await gen(a)).status == 200
        assert (await gen(a)).status == 200
        assert (await gen(a)).status == 429
        assert (await gen(b)).status == 200
    warnings = [e for e in logs if e["event"] == "shared_limits_unreachable"]
    assert len(warnings) == 2  # once for each gateway, not once for each request
    with redis_server(tmp_path, port):  # back (empty, as a restarted Redis): shared again
        assert (await gen(b)).status == 200
        assert (await gen(a)).status == 200
        assert (await gen(b)).status == 429  # memory alone would still have let b through


async def test_redis_down_closed_refuses_with_503(aiohttp_client: Any, tmp_path: Any) -> None:
    clock, port = Clock(DAY_START), free_port()
    with redis_server(tmp_path, port) as url:
        a, _ = await pair(aiohttp_client, url, {"limits": {"requests_per_minute": 5}}, clock,
                          on_error="closed")
        assert (await gen(a)).status == 200
    refused = await gen(a)
    assert refused.status == 503 and int(refused.headers["retry-after"]) >= 1
    assert (await refused.json())["error"]["code"] == "upstream_unavailable"
    with redis_server(tmp_path, port):
        resp = await gen(a)
        assert resp.status == 200 and resp.headers["x-ratelimit-remaining-requests"] == "4"


async def test_answers_ending_together_all_release_their_slots(aiohttp_client: Any,
                                                               tmp_path: Any) -> None:
    import redis.asyncio as redis

    clock = Clock(DAY_START)
    with redis_server(tmp_path) as url:
        a, b = await pair(aiohttp_client, url, {"limits": {"concurrent_requests": 40},
                                                "budget": {"images_per_day": 1000}}, clock)
        for _ in range(3):  # waves that end together: their settlements share round trips
            answers = await asyncio.wait_for(asyncio.gather(
                *(gen(c, n=2, prompt="partial") for c in (a, b) for _ in range(10))), 20)
            assert [r.status for r in answers] == [200] * 20
        client = redis.from_url(url)
        assert await client.zcard("imagegate:use:{team-a}:con") == 0
        spent = await client.get("imagegate:use:{team-a}:img:d:20261201")
        await client.aclose()
        assert int(spent) == 60  # 60 requests for 2 images, 1 delivered each
