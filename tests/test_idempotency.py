"""The Idempotency-Key machinery on an inline aiohttp app: ledgers, capture, detached runs."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.schema import StateConfig
from imagegate.middlewares.capture import events_kept
from imagegate.middlewares.errors import errors_middleware
from imagegate.middlewares.exactly_once import HEADER, ExactlyOnce
from imagegate.middlewares.idempotency import check_key, json_fingerprint
from imagegate.middlewares.ledger import MemoryLedger, RedisLedger, StoredAnswer
from imagegate.middlewares.metrics import Metrics
from prometheus_client import CollectorRegistry

from tests.conftest import make_config
from tests.harness import Clock
from tests.redis_server import redis_server


@pytest.mark.parametrize("value", ["a", "x" * 255, "order 42/retry:#1 ~!"])
def test_good_keys_pass(value: str) -> None:
    check_key(value)


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there", "nul\x00"])
def test_bad_keys_are_400_naming_the_header(value: str) -> None:
    with pytest.raises(GatewayError) as caught:
        check_key(value)
    assert caught.value.status == 400 and caught.value.param == HEADER
    assert value not in caught.value.message or not value


def test_fingerprint_ignores_key_order_and_spacing_only() -> None:
    a = json_fingerprint(b'{"prompt": "cat", "n": 1}')
    assert a == json_fingerprint(b'{"n":1,"prompt":"cat"}')
    assert a != json_fingerprint(b'{"n":2,"prompt":"cat"}')


def _answer(body: bytes = b"{}", expires_at: float = 2e6) -> StoredAnswer:
    return StoredAnswer(200, [("Content-Type", "application/json")], body, expires_at)


async def test_memory_ledger_claims_replays_and_releases() -> None:
    clock = Clock(1_000_000.0)
    ledger = MemoryLedger(lease_s=30, max_bytes=1000, clock=clock)
    first = await ledger.claim("s", "fp")
    assert first.kind == "won"
    assert (await ledger.claim("s", "fp")).kind == "held"
    assert (await ledger.claim("s", "other")).kind == "mismatch"
    await ledger.release("s", first.token)
    again = await ledger.claim("s", "fp")
    assert again.kind == "won"
    assert await ledger.finish("s", again.token, _answer(b"one", clock.now + 60))
    done = await ledger.claim("s", "fp")
    assert done.kind == "done" and done.answer is not None and done.answer.body == b"one"
    clock.now += 61  # the answer expired
    assert (await ledger.claim("s", "fp")).kind == "won"


async def test_memory_ledger_lease_lapses_without_heartbeat() -> None:
    clock = Clock(1_000_000.0)
    ledger = MemoryLedger(lease_s=30, max_bytes=1000, clock=clock)
    dead = await ledger.claim("s", "fp")
    clock.now += 20
    assert (await ledger.claim("s", "fp")).kind == "held"
    clock.now += 11
    assert (await ledger.claim("s", "fp")).kind == "won"
    assert not await ledger.finish("s", dead.token, _answer())  # a late holder stores nothing


async def test_memory_ledger_drops_oldest_answers_over_its_budget() -> None:
    ledger = MemoryLedger(lease_s=30, max_bytes=10, clock=Clock(1_000_000.0))
    for scope in ("a", "b"):
        claim = await ledger.claim(scope, "fp")
        await ledger.finish(scope, claim.token, _answer(b"123456"))
    assert ledger.stored_bytes == 6
    assert (await ledger.claim("a", "fp")).kind == "won"
    assert (await ledger.claim("b", "fp")).kind == "done"


def test_replayed_streams_keep_final_events_only() -> None:
    body = (b": keep-alive\n\nevent: image_generation.partial_image\ndata: {}\n\n"
            b"event: image_generation.completed\ndata: {\"b64_json\":\"x\"}\n\n")
    assert events_kept(body) == b"event: image_generation.completed\ndata: {\"b64_json\":\"x\"}\n\n"
    assert events_kept(body + b"event: error\ndata: {}\n\n") is None
    assert events_kept(b": keep-alive\n\n") is None


class Upstream:
    """The handler behind the middleware: counts its calls, can be held, can fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.fail = False

    async def json(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        self.finished.set()
        if self.fail:
            raise GatewayError("upstream_unavailable", "down")
        return web.json_response({"call": self.calls}, headers={"x-imagegate-provider": "p",
                                                                 "x-ratelimit-remaining": "1"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        self.started.set()
        while not self.gate.is_set():
            await out.write(b": keep-alive\n\n")
            await asyncio.sleep(0.01)
        await out.write(b'event: image_generation.completed\ndata: {"call":%d}\n\n' % self.calls)
        await out.write_eof()
        self.finished.set()
        return out


async def start(aiohttp_client: Any, idem: ExactlyOnce, upstream: Upstream) -> Any:
    @web.middleware
    async def idem_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        if key is None:
            return await handler(request)
        check_key(key)
        fingerprint = json_fingerprint(await request.read())
        return await idem.answer(request, handler, key, request.path, fingerprint, wait_s=5)

    app = web.Application(middlewares=[errors_middleware(), idem_mw])
    app.cleanup_ctx.append(idem.lifecycle)
    app.router.add_post("/json", upstream.json)
    app.router.add_post("/stream", upstream.stream)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


def idempotency(ledger: Any = None) -> ExactlyOnce:
    return ExactlyOnce(make_config(), Metrics(CollectorRegistry()), ledger)


async def post(client: Any, path: str, key: str = "k1", body: Any = None) -> Any:
    resp = await client.post(path, json=body or {"prompt": "cat"}, headers={HEADER: key})
    return resp.status, await resp.read(), resp.headers


async def test_a_retry_after_completion_is_replayed(aiohttp_client: Any) -> None:
    up = Upstream()
    client = await start(aiohttp_client, idempotency(), up)
    status, body, headers = await post(client, "/json")
    again = await post(client, "/json")
    assert up.calls == 1 and again[:2] == (status, body) == (200, b'{"call": 1}')
    assert again[2]["idempotent-replayed"] == "true" and "idempotent-replayed" not in headers
    assert again[2]["x-imagegate-provider"] == "p" and "x-ratelimit-remaining" not in again[2]
    other = await post(client, "/json", key="k2")  # another key runs again
    assert up.calls == 2 and other[1] == b'{"call": 2}'


async def test_a_concurrent_duplicate_waits_for_the_first(aiohttp_client: Any) -> None:
    up = Upstream()
    up.gate.clear()
    idem = idempotency()
    client = await start(aiohttp_client, idem, up)
    first = asyncio.create_task(post(client, "/json"))
    await up.started.wait()
    second = asyncio.create_task(post(client, "/json"))
    await asyncio.sleep(0.05)
    assert not second.done()
    up.gate.set()
    one, two = await first, await second
    assert up.calls == 1 and one[1] == two[1] and two[2]["idempotent-replayed"] == "true"
    assert idem.metrics.registry.get_sample_value(
        "imagegate_idempotent_coalesced_total", {"key": "anonymous"}) == 1


async def test_same_key_with_another_body_is_422(aiohttp_client: Any) -> None:
    up = Upstream()
    client = await start(aiohttp_client, idempotency(), up)
    await post(client, "/json")
    status, body, _ = await post(client, "/json", body={"prompt": "dog"})
    assert status == 422 and b"idempotency_key_reused" in body and up.calls == 1


async def test_a_failed_first_attempt_releases_the_key(aiohttp_client: Any) -> None:
    up = Upstream()
    up.fail = True
    client = await start(aiohttp_client, idempotency(), up)
    assert (await post(client, "/json"))[0] == 502
    up.fail = False
    status, body, headers = await post(client, "/json")
    assert (status, body, up.calls) == (200, b'{"call": 2}', 2)
    assert "idempotent-replayed" not in headers


async def hang_up(client: Any, path: str, up: Upstream) -> None:
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.post(client.make_url(path), json={"prompt": "cat"},
                                            headers={HEADER: "k1"}))
    await up.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.close()  # the connection is gone


@pytest.mark.parametrize("path", ["/json", "/stream"])
async def test_a_request_whose_client_hung_up_runs_on_and_is_kept(aiohttp_client: Any,
                                                                  path: str) -> None:
    up = Upstream()
    up.gate.clear()
    idem = idempotency()
    client = await start(aiohttp_client, idem, up)
    await hang_up(client, path, up)
    await asyncio.sleep(0.05)
    assert idem.tasks  # still running, held by the app
    up.gate.set()
    await up.finished.wait()
    while idem.tasks:
        await asyncio.sleep(0.01)
    status, body, headers = await post(client, path)
    assert status == 200 and up.calls == 1 and headers["idempotent-replayed"] == "true"
    assert body in (b'{"call": 1}', b'event: image_generation.completed\ndata: {"call":1}\n\n')


async def test_without_a_key_a_hang_up_still_cancels(aiohttp_client: Any) -> None:
    up = Upstream()
    up.gate.clear()
    client = await start(aiohttp_client, idempotency(), up)
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.post(client.make_url("/json"), json={}))
    await up.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.close()
    await asyncio.sleep(0.05)
    up.gate.set()
    await asyncio.sleep(0.05)
    assert not up.finished.is_set()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as url:
        yield url


async def test_redis_ledger_shares_leases_and_answers(redis_url: str) -> None:
    clock = Clock(1_000_000.0)
    state = StateConfig(backend="redis", redis_url=redis_url)
    a = RedisLedger(state, lease_s=30, ttl_s=600, max_bytes=1000, clock=clock)
    b = RedisLedger(state, lease_s=30, ttl_s=600, max_bytes=1000, clock=clock)
    try:
        dead = await a.claim("r1", "fp")
        assert dead.kind == "won"
        assert (await b.claim("r1", "fp")).kind == "held"
        assert (await b.claim("r1", "zz")).kind == "mismatch"
        clock.now += 20
        assert await a.heartbeat("r1", dead.token)
        clock.now += 20
        assert (await b.claim("r1", "fp")).kind == "held"  # renewed 20 s ago
        clock.now += 31  # the holder died: no more heartbeats
        taken = await b.claim("r1", "fp")
        assert taken.kind == "won"
        assert not await a.finish("r1", dead.token, _answer(b"late"))
        assert await b.finish("r1", taken.token, _answer(b"answer", clock.now + 60))
        done = await a.claim("r1", "fp")
        assert done.kind == "done" and done.answer is not None and done.answer.body == b"answer"
        again = await a.claim("r2", "fp")
        await a.release("r2", again.token)
        assert (await b.claim("r2", "fp")).kind == "won"
    finally:
        await a.close()
        await b.close()
