"""Shared state on a real 3-node Redis Cluster: two gateway processes share one limit, one budget,
one set of concurrency leases, one idempotency ledger, one route rest and the hosted images,
under races; every key of one API key sits on one hash slot."""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from redis.cluster import RedisCluster

from tests.gateway_process import GatewayProcess, gateway_process
from tests.redis_cluster import Cluster, redis_cluster
from tests.upstreams import openai as openai_mock

KEYS = {  # key id -> (its secret, its limits and budget)
    "rpm": {"limits": {"requests_per_minute": 50}},
    "ipm": {"limits": {"images_per_minute": 50}},
    "con": {"limits": {"concurrent_requests": 2}},
    "budget": {"budget": {"images_per_day": 3, "usd_per_day": 5}},
    "idem": {},
    "rests": {},
}


class Upstream:
    """The mock OpenAI on 127.0.0.1 in a thread of its own: the gateways are other processes,
    and it answers while a test's own loop waits for them."""

    def __init__(self) -> None:
        self.recorder = openai_mock.Recorder()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(openai_mock.make_app(self.recorder))
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def calls(self, model: str | None = None) -> list[Any]:
        return [r for r in list(self.recorder.requests)
                if model is None or (r.json or {}).get("model") == model]


def write_config(path: Path, cluster: Cluster, upstream: Upstream) -> Path:
    price = {"per_image": 0.04}
    path.write_text(json.dumps({
        "auth": {"keys": [{"id": kid, "key": f"ig-{kid}", **extra}
                          for kid, extra in KEYS.items()]},
        "state": {"backend": "redis", "redis_url": cluster.url, "redis_cluster": True},
        "storage": {"backend": "redis", "signing_secret": "shared-between-gateways"},
        "providers": {"openai": {"type": "openai", "base_url": f"http://127.0.0.1:{upstream.port}",
                                 "api_key": openai_mock.API_KEY},
                      "local": {"type": "local"}},
        "models": {"gpt-image-1": {"routes": [{"provider": "openai", "price": price}]},
                   "flaky": {"routes": [{"provider": "openai", "model": "flaky-upstream"}]},
                   "local": {"routes": [{"provider": "local"}]}},
        "routing": {"cooldown_s": 30},
        "fetch": {"allow_private_hosts": ["127.0.0.1"]},
    }))
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Cluster, Upstream, list[GatewayProcess]]]:
    tmp = Path(tmp_path_factory.mktemp("cluster"))
    with ExitStack() as stack:
        cluster = stack.enter_context(redis_cluster(tmp / "redis"))
        upstream = Upstream()
        stack.callback(upstream.stop)
        config = write_config(tmp / "imagegate.yaml", cluster, upstream)
        gateways = [stack.enter_context(gateway_process(tmp, config, name=f"gw{i}"))
                    for i in range(2)]
        for gw in gateways:
            gw.wait_healthy()
        yield cluster, upstream, gateways


async def post(session: aiohttp.ClientSession, gw: GatewayProcess, key: str,
               model: str = "gpt-image-1", **body: Any) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer ig-{key}", **body.pop("headers", {})}
    async with session.post(f"{gw.base_url}/v1/images/generations", headers=headers,
                            json={"model": model, "prompt": "a kite", **body}) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.json()


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=30))


def client(cluster: Cluster) -> RedisCluster:
    return RedisCluster.from_url(cluster.url)


async def test_two_gateways_admit_exactly_a_request_limit(shared: Any) -> None:
    cluster, upstream, gws = shared
    before = len(upstream.calls())
    async with session() as s:
        answers = await asyncio.gather(*(post(s, gws[i % 2], "rpm") for i in range(200)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 50, 429: 150}
    codes = {body["error"]["code"] for status, _, body in answers if status == 429}
    assert codes == {"rate_limit_exceeded"}
    assert len(upstream.calls()) - before == 50
    assert client(cluster).zcard("imagegate:use:{rpm}:rpm") == 50


async def test_two_gateways_admit_exactly_an_image_limit_with_mixed_n(shared: Any) -> None:
    cluster, upstream, gws = shared
    ns = [1 + i % 4 for i in range(200)]  # 50 each of n=1..4: 500 images asked
    async with session() as s:
        answers = await asyncio.gather(*(post(s, gws[i % 2], "ipm", n=n)
                                         for i, n in enumerate(ns)))
    admitted = [n for n, (status, _, _) in zip(ns, answers, strict=True) if status == 200]
    refused = [body["error"]["code"] for status, _, body in answers if status != 200]
    # n=1 is refused only once 50 images are in; if every n=1 got in they alone are the 50
    assert sum(admitted) == 50
    assert set(refused) == {"rate_limit_exceeded"} and len(refused) == 200 - len(admitted)
    assert sum(len(body["data"]) for status, _, body in answers if status == 200) == 50
    assert int(client(cluster).get("imagegate:use:{ipm}:ipm:sum") or 0) == 50


async def test_two_gateways_share_concurrency_leases(shared: Any) -> None:
    _, upstream, gws = shared
    upstream.recorder.delay_s = 0.8  # the first two hold their slots while the rest arrive
    try:
        async with session() as s:
            answers = await asyncio.gather(*(post(s, gws[i % 2], "con") for i in range(6)))
            assert Counter(status for status, _, _ in answers) == {200: 2, 429: 4}
            assert {body["error"]["code"] for status, _, body in answers if status == 429} == {
                "rate_limit_exceeded"}
            upstream.recorder.delay_s = 0
            # both leases were given back through the cluster: two more fit at once
            again = await asyncio.gather(post(s, gws[0], "con"), post(s, gws[1], "con"))
            assert [status for status, _, _ in again] == [200, 200]
    finally:
        upstream.recorder.delay_s = 0


async def test_two_gateways_spend_one_budget(shared: Any) -> None:
    _, _, gws = shared
    async with session() as s:
        answers = [await post(s, gws[i % 2], "budget") for i in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429]
    assert [h["x-imagegate-budget-remaining-images"] for _, h, _ in answers[:3]] == [
        "2", "1", "0"]
    assert answers[0][1]["x-imagegate-budget-remaining-usd"] == "4.96"
    assert answers[3][2]["error"]["code"] == "budget_exceeded"


async def test_duplicates_across_two_gateways_reach_the_provider_once(shared: Any) -> None:
    _, upstream, gws = shared
    upstream.recorder.delay_s = 0.5
    prompt = "one otter, once"
    try:
        async with session() as s:
            answers = await asyncio.gather(*(
                post(s, gws[i % 2], "idem", prompt=prompt,
                     headers={"Idempotency-Key": "order-cluster-1"}) for i in range(20)))
    finally:
        upstream.recorder.delay_s = 0
    assert [status for status, _, _ in answers] == [200] * 20
    assert len([r for r in upstream.calls() if (r.json or {}).get("prompt") == prompt]) == 1
    assert len({json.dumps(body, sort_keys=True) for _, _, body in answers}) == 1
    assert sum(h.get("idempotent-replayed") == "true" for _, h, _ in answers) == 19


async def test_a_route_rested_on_one_gateway_rests_on_the_other(shared: Any) -> None:
    cluster, upstream, gws = shared
    upstream.recorder.mode = "server_error"
    try:
        async with session() as s:
            for _ in range(3):
                assert (await post(s, gws[0], "rests", model="flaky"))[0] == 502
            assert (await post(s, gws[0], "rests", model="flaky"))[0] == 503
            key = 'imagegate:rest:{["openai","flaky-upstream"]}'
            assert client(cluster).pttl(key) > 25_000
            calls = len(upstream.calls("flaky-upstream"))
            await asyncio.sleep(1.3)  # each gateway polls the rests once a second
            status, headers, body = await post(s, gws[1], "rests", model="flaky")
    finally:
        upstream.recorder.mode = "ok"
    assert status == 503 and int(headers["retry-after"]) > 25
    assert len(upstream.calls("flaky-upstream")) == calls


async def test_hosted_images_on_the_cluster_open_from_the_other_gateway(shared: Any) -> None:
    cluster, _, gws = shared
    async with session() as s:
        status, _, body = await post(s, gws[0], "idem", model="local", size="64x64",
                                     response_format="url")
        assert status == 200
        path = body["data"][0]["url"].split("/", 3)[3]
        async with s.get(f"{gws[1].base_url}/{path}") as resp:
            assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")
    name = path.split("/")[-1].split("?")[0]
    assert client(cluster).ttl(f"imagegate:image:{name}") > 3000


async def test_every_key_of_one_key_id_sits_on_one_slot(shared: Any) -> None:
    cluster, _, gws = shared
    async with session() as s:
        for kid in KEYS:
            await post(s, gws[0], kid, headers={"Idempotency-Key": f"slot-{kid}"})
    slots: dict[str, set[int]] = {}
    for port in cluster.primaries():
        node = redis.Redis(port=port)
        for raw in node.scan_iter("imagegate:*"):
            key = raw.decode()
            if key.startswith(("imagegate:use:", "imagegate:idem:")):
                tag = key[key.index("{") + 1:key.index("}")]
                slots.setdefault(tag, set()).add(int(node.execute_command("CLUSTER", "KEYSLOT",
                                                                          key)))
    assert {"rpm", "ipm", "con", "budget", "idem"} <= set(slots)
    assert all(len(found) == 1 for found in slots.values()), slots


async def test_a_burst_past_a_hundred_admissions_stays_on_the_cluster(shared: Any) -> None:
    from imagegate.config.schema import StateConfig
    from imagegate.middlewares.limits import Limiter, Plan, Window

    cluster, _, _ = shared
    limiter = Limiter(StateConfig(backend="redis", redis_url=cluster.url, redis_cluster=True))
    plan = Plan([Window("requests_per_minute", "imagegate:use:{burst}:rpm", 1000, 1)], [], [])
    running = limiter.lifecycle(web.Application())  # start-up: the slot map, the scripts
    await running.__anext__()
    try:  # redis-py's own cap (100 connections a node) would refuse the 101st in flight
        decisions = await asyncio.gather(*(limiter.admit(plan) for _ in range(300)))
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await running.__anext__()
    assert all(d.backend is limiter.redis for d in decisions)
    assert sorted(d.used[0] for d in decisions) == list(range(1, 301))  # each counted once
