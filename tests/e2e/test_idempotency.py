"""Idempotency-Key end to end with the official SDK: replays, waits, hang-ups, shared Redis."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from imagegate.config.schema import Config, StateConfig
from imagegate.middlewares.exactly_once import EXACTLY_ONCE, HEADER, scope_of
from imagegate.middlewares.idempotency import json_fingerprint
from imagegate.middlewares.ledger import RedisLedger
from imagegate.proxy.app import create_app
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.conftest import GATEWAY_KEY, make_config, openai_models
from tests.harness import Clock
from tests.redis_server import redis_server
from tests.schemas import checked_sdk
from tests.upstreams import openai as openai_mock

PROMPT = {"model": "gpt-image-1", "prompt": "a lighthouse"}




@pytest.fixture
def start(aiohttp_client: Any, openai_upstream: Any, tmp_path: Any) -> Callable[..., Any]:
    """A gateway in front of the counting OpenAI mock; hang-ups cancel handlers, as served."""
    _, base = openai_upstream

    async def run(overrides: dict[str, Any] | None = None, clock: Any = None,
                  timeout_s: float = 300) -> Any:
        providers, models = openai_models(base)
        providers["openai"]["timeout_s"] = timeout_s
        config: Config = make_config(overrides, tmp_path=tmp_path, providers=providers,
                                     models=models)
        registry = CollectorRegistry()
        app = create_app(config, registry=registry, **({"clock": clock} if clock else {}))
        client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
        client.registry = registry
        return client

    return run


def sdk(client: Any, **kwargs: Any) -> openai.AsyncOpenAI:
    return checked_sdk(str(client.make_url("/v1")), "x", **kwargs)


def key(value: str = "order-42") -> dict[str, Any]:
    return {"extra_headers": {"Idempotency-Key": value}}


async def generate(client: Any, value: str = "order-42", **fields: Any) -> Any:
    async with sdk(client) as api:
        raw = await api.images.with_raw_response.generate(**{**PROMPT, **fields}, **key(value))
        return raw.headers, raw.parse()


async def upstream_calls(recorder: Any, count: int) -> None:
    while len(recorder.requests) < count:
        await asyncio.sleep(0.01)


async def test_a_retry_after_completion_is_replayed(start: Any, openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    client = await start()
    with capture_logs() as logs:
        first_headers, first = await generate(client)
        headers, again = await generate(client)
    assert len(recorder.requests) == 1
    assert again.model_dump() == first.model_dump()
    assert headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first_headers
    assert headers["x-imagegate-provider"] == first_headers["x-imagegate-provider"] == "openai"
    assert [e["idempotency"] for e in logs if e["event"] == "request"] == ["first", "replayed"]
    assert client.registry.get_sample_value("imagegate_idempotent_replays_total",
                                            {"key": "anonymous"}) == 1


async def test_two_concurrent_duplicates_make_one_upstream_call(start: Any,
                                                                openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    client = await start()
    first = asyncio.create_task(generate(client))
    await upstream_calls(recorder, 1)
    second = asyncio.create_task(generate(client))
    once = client.app[EXACTLY_ONCE]
    while not once.changed:  # the duplicate is waiting
        await asyncio.sleep(0.01)
    recorder.gate.set()
    (_, one), (headers, two) = await first, await second
    assert len(recorder.requests) == 1 and one.data[0].b64_json == two.data[0].b64_json
    assert headers["idempotent-replayed"] == "true"
    assert client.registry.get_sample_value("imagegate_idempotent_coalesced_total",
                                            {"key": "anonymous"}) == 1


async def test_a_client_that_hangs_up_gets_its_image_on_retry(start: Any,
                                                              openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    client = await start()
    async with sdk(client, timeout=0.3) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.images.generate(**PROMPT, **key())
    once = client.app[EXACTLY_ONCE]
    assert once.tasks  # still running upstream, held by the app
    recorder.gate.set()
    while once.tasks:
        await asyncio.sleep(0.01)
    headers, answer = await generate(client)
    assert len(recorder.requests) == 1 and headers["idempotent-replayed"] == "true"
    assert answer.data[0].b64_json == openai_mock.PNG_B64


async def test_the_same_key_with_another_request_is_422(start: Any,
                                                        openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    client = await start()
    await generate(client)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await generate(client, prompt="a windmill")
    assert caught.value.code == "idempotency_key_reused"
    assert caught.value.type == "invalid_request_error"
    assert "different request" in caught.value.message and len(recorder.requests) == 1
    await generate(client, value="order-43", prompt="a windmill")  # its own key runs


async def test_a_failed_first_attempt_releases_the_key(start: Any, openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    recorder.mode = "server_error"
    client = await start()
    with pytest.raises(openai.APIStatusError) as caught:
        await generate(client)
    assert caught.value.status_code == 502
    recorder.mode = "ok"
    headers, answer = await generate(client)
    assert len(recorder.requests) == 2 and "idempotent-replayed" not in headers
    assert answer.data[0].b64_json


@pytest.mark.parametrize("value", ["", "x" * 256, "tab\tinside"])
async def test_bad_header_values_are_400(start: Any, openai_upstream: Any, value: str) -> None:
    recorder, _ = openai_upstream
    client = await start()
    with pytest.raises(openai.BadRequestError) as caught:
        await generate(client, value=value)
    assert caught.value.param == "Idempotency-Key" and not recorder.requests


async def test_a_stream_replays_its_completed_images(start: Any, openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    client = await start()

    async def events() -> list[Any]:
        async with sdk(client) as api:
            stream = await api.images.generate(**PROMPT, stream=True, **key())
            return [event async for event in stream]

    first, again = await events(), await events()
    assert [e.type for e in first] == ["image_generation.partial_image",
                                       "image_generation.completed"]
    assert [e.model_dump() for e in again] == [first[1].model_dump()]
    assert len(recorder.requests) == 1


async def test_url_answers_replay_with_working_links(start: Any, openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    client = await start()
    body = {"model": "local", "prompt": "kite", "size": "64x64", "response_format": "url"}
    _, first = await generate(client, **body)
    headers, again = await generate(client, **body)
    assert headers["idempotent-replayed"] == "true" and again.data[0].url == first.data[0].url
    resp = await client.get("/" + again.data[0].url.split("/", 3)[3])
    assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")


def redis_overrides(url: str) -> dict[str, Any]:
    return {"state": {"backend": "redis", "redis_url": url},
            "storage": {"backend": "redis", "signing_secret": "shared"}}


async def test_two_gateways_share_answers_through_redis(start: Any, openai_upstream: Any,
                                                        tmp_path: Any) -> None:
    recorder, _ = openai_upstream
    with redis_server(tmp_path) as url:
        one, two = await start(redis_overrides(url)), await start(redis_overrides(url))
        _, first = await generate(one)
        headers, again = await generate(two)  # the retry lands on another machine
        assert len(recorder.requests) == 1 and headers["idempotent-replayed"] == "true"
        assert again.model_dump() == first.model_dump()
        recorder.gate = asyncio.Event()
        running = asyncio.create_task(generate(one, value="order-44"))
        await upstream_calls(recorder, 2)
        waiting = asyncio.create_task(generate(two, value="order-44"))
        while not two.app[EXACTLY_ONCE].changed:  # the second gateway polls the shared ledger
            await asyncio.sleep(0.01)
        recorder.gate.set()
        (_, a), (headers, b) = await running, await waiting
        assert len(recorder.requests) == 2 and a.model_dump() == b.model_dump()
        assert headers["idempotent-replayed"] == "true"


async def test_a_dead_holders_lease_expires(start: Any, openai_upstream: Any,
                                            tmp_path: Any) -> None:
    recorder, _ = openai_upstream
    clock = Clock(2_000_000_000.0)
    with redis_server(tmp_path) as url:
        # a gateway that claimed the key, then died without renewing its lease
        dead = RedisLedger(StateConfig(backend="redis", redis_url=url), lease_s=30,
                           ttl_s=86400, max_bytes=1000, clock=clock)
        raw = json.dumps(PROMPT).encode()
        await dead.claim(scope_of("anonymous", "generations", "order-42"),
                         json_fingerprint(raw))
        await dead.close()
        client = await start(redis_overrides(url), clock=clock, timeout_s=0.4)
        with pytest.raises(openai.ConflictError) as caught:  # waited as long as the provider
            await generate(client)
        assert caught.value.code == "idempotency_key_in_use" and not recorder.requests
        clock.now += 31
        headers, answer = await generate(client)
        assert len(recorder.requests) == 1 and "idempotent-replayed" not in headers
        assert answer.data[0].b64_json == openai_mock.PNG_B64


async def edit(client: Any, image: bytes, value: str = "edit-1", filename: str = "a.png",
               **kwargs: Any) -> Any:
    async with sdk(client, **kwargs) as api:
        raw = await api.images.with_raw_response.edit(
            model="gpt-image-1", prompt="add a boat", image=(filename, image, "image/png"),
            **key(value))
        return raw.headers, raw.parse()


async def test_multipart_edits_are_fingerprinted_by_fields_and_file_bytes(
        start: Any, openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    client = await start()
    other = openai_mock.png_bytes((200, 10, 10))
    _, first = await edit(client, openai_mock.PNG)
    headers, again = await edit(client, openai_mock.PNG, filename="renamed.png")
    assert len(recorder.requests) == 1 and headers["idempotent-replayed"] == "true"
    assert again.model_dump() == first.model_dump()
    assert [p.sha256 for p in recorder.last.parts if p.filename] == [
        hashlib.sha256(openai_mock.PNG).hexdigest()]  # the whole file went upstream
    with pytest.raises(openai.UnprocessableEntityError):
        await edit(client, other)
    await generate(client, value="edit-1")  # another endpoint: another scope
    assert len(recorder.requests) == 2


async def test_a_form_with_its_fields_after_the_file_is_kept_whole(start: Any,
                                                                  openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    client = await start()

    async def send() -> Any:
        form = aiohttp.FormData()
        form.add_field("image", openai_mock.PNG, filename="a.png", content_type="image/png")
        form.add_field("model", "gpt-image-1")
        form.add_field("prompt", "add a boat")
        resp = await client.post("/v1/images/edits", data=form, headers={HEADER: "late-1"})
        return resp.status, await resp.json(), resp.headers

    (s1, b1, _), (s2, b2, h2) = await send(), await send()
    assert s1 == s2 == 200 and b1 == b2 and h2["idempotent-replayed"] == "true"
    assert len(recorder.requests) == 1 and recorder.last.parts[0].size == len(openai_mock.PNG)


async def test_an_edit_whose_client_hung_up_is_still_sent_whole(start: Any,
                                                                openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    client = await start()
    with pytest.raises(openai.APITimeoutError):
        await edit(client, openai_mock.PNG, timeout=0.3)
    recorder.gate.set()
    once = client.app[EXACTLY_ONCE]
    while once.tasks:
        await asyncio.sleep(0.01)
    headers, answer = await edit(client, openai_mock.PNG)
    assert len(recorder.requests) == 1 and headers["idempotent-replayed"] == "true"
    assert [p.sha256 for p in recorder.last.parts if p.filename] == [
        hashlib.sha256(openai_mock.PNG).hexdigest()]
    assert answer.data[0].b64_json == openai_mock.PNG_B64


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's own warning
async def test_local_edits_and_variations_replay(start: Any, openai_upstream: Any) -> None:
    client = await start()
    async with sdk(client) as api:
        for _ in range(2):
            raw = await api.images.with_raw_response.edit(
                model="local", prompt="boat", image=("a.png", openai_mock.PNG, "image/png"),
                size="64x64", **key("local-1"))
        assert raw.headers["idempotent-replayed"] == "true"
        for _ in range(2):
            raw = await api.images.with_raw_response.create_variation(
                model="gpt-image-1", image=("a.png", openai_mock.PNG, "image/png"),
                **key("var-1"))
        assert raw.headers["idempotent-replayed"] == "true"
    recorder, _ = openai_upstream
    assert [r.path for r in recorder.requests] == ["/images/variations"]


async def test_a_relayed_stream_whose_client_hung_up_is_replayed(start: Any,
                                                                 openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    client = await start()
    async with sdk(client, timeout=0.3) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.images.generate(**PROMPT, stream=True, **key())
    recorder.gate.set()
    once = client.app[EXACTLY_ONCE]
    while once.tasks:
        await asyncio.sleep(0.01)
    async with sdk(client) as api:
        events = [e async for e in await api.images.generate(**PROMPT, stream=True, **key())]
    assert [e.type for e in events] == ["image_generation.completed"]
    assert events[0].b64_json == openai_mock.PNG_B64 and len(recorder.requests) == 1


async def test_an_adapted_stream_cut_midway_is_kept(start: Any, aiohttp_server: Any,
                                                    tmp_path: Any, aiohttp_client: Any) -> None:
    gate, calls = asyncio.Event(), [0]

    async def ark(request: web.Request) -> web.Response:  # Ark's wire format, made slow
        calls[0] += 1
        await gate.wait()
        return web.json_response({"model": "m", "created": 1, "data": [
            {"b64_json": openai_mock.PNG_B64, "size": "64x64"}]})

    app = web.Application()
    app.router.add_post("/images/generations", ark)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    config = make_config({"server": {"stream_keepalive_s": 0.02}}, tmp_path=tmp_path,
                         providers={"ark": {"type": "ark", "base_url": base, "api_key": "k"}},
                         models={"seedream": {"routes": [{"provider": "ark"}]}})
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry()),
                                  server_kwargs={"handler_cancellation": True})
    body = {"model": "seedream", "prompt": "a lighthouse", "stream": True}
    async with sdk(client) as api:
        stream = await api.images.generate(**body, **key())
        await stream.close()  # the client leaves while keep-alives flow
    once = client.app[EXACTLY_ONCE]
    assert once.tasks
    gate.set()
    while once.tasks:
        await asyncio.sleep(0.01)
    async with sdk(client) as api:
        events = [e async for e in await api.images.generate(**body, **key())]
    assert [e.type for e in events] == ["image_generation.completed"] and calls[0] == 1
    assert events[0].b64_json == openai_mock.PNG_B64


@pytest.mark.parametrize(("on_error", "status"), [("open", 200), ("closed", 503)])
async def test_with_redis_down_keys_follow_on_redis_error(start: Any, on_error: str,
                                                          status: int) -> None:
    from tests.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = await start({"state": {"backend": "redis", "redis_url": url,
                                    "on_redis_error": on_error}})
    resp = await client.post("/v1/images/generations", json=PROMPT,
                             headers={HEADER: "order-42"})
    assert resp.status == status


async def test_a_running_request_renews_its_lease(start: Any, openai_upstream: Any,
                                                  tmp_path: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    clock = Clock(2_000_000_000.0)
    with redis_server(tmp_path) as url:
        overrides = {**redis_overrides(url), "idempotency": {"lease_s": 1}}
        one = await start(overrides, clock=clock)
        two = await start(overrides, clock=clock)
        running = asyncio.create_task(generate(one))
        await upstream_calls(recorder, 1)
        ledger = one.app[EXACTLY_ONCE].ledger
        scope = "imagegate:idem:" + scope_of("anonymous", "generations", "order-42")
        first = json.loads(await ledger.client.get(scope))["lease_until"]
        clock.now += 0.9

        async def renewed() -> None:  # the holder's heartbeat, every lease_s / 3
            while json.loads(await ledger.client.get(scope))["lease_until"] == first:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(renewed(), 3)
        clock.now += 0.6  # past the first lease, within the renewed one
        waiting = asyncio.create_task(generate(two))
        while not two.app[EXACTLY_ONCE].changed:  # it found the key held, and waits
            await asyncio.sleep(0.01)
        recorder.gate.set()
        (_, a), (headers, b) = await running, await waiting
        assert len(recorder.requests) == 1 and headers["idempotent-replayed"] == "true"
        assert a.model_dump() == b.model_dump()


async def test_a_replay_consumes_no_limit_and_costs_nothing(aiohttp_client: Any,
                                                            openai_upstream: Any,
                                                            tmp_path: Any) -> None:
    recorder, base = openai_upstream
    providers, _ = openai_models(base)
    config = make_config(
        {"auth": {"keys": [{"id": "team-a", "key": GATEWAY_KEY,
                            "limits": {"requests_per_minute": 1}}]}},
        tmp_path=tmp_path, providers=providers,
        models={"gpt-image-1": {"routes": [{"provider": "openai", "price": {"per_image": 0.04}}]}})
    registry = CollectorRegistry()
    client = await aiohttp_client(create_app(config, registry=registry))
    async with checked_sdk(str(client.make_url("/v1")), GATEWAY_KEY) as api:
        first = await api.images.with_raw_response.generate(**PROMPT, **key())
        again = await api.images.with_raw_response.generate(**PROMPT, **key())
        with pytest.raises(openai.RateLimitError):  # the one request a minute is spent
            await api.images.generate(**PROMPT, **key("order-43"))
    assert first.headers["x-imagegate-cost-usd"] == "0.04"
    assert again.headers["idempotent-replayed"] == "true"
    assert "x-imagegate-cost-usd" not in again.headers and len(recorder.requests) == 1
    assert registry.get_sample_value("imagegate_cost_usd_total", {
        "key": "team-a", "model": "gpt-image-1", "provider": "openai"}) == pytest.approx(0.04)
    assert registry.get_sample_value("imagegate_idempotent_replays_total",
                                     {"key": "team-a"}) == 1


async def test_without_a_key_a_hang_up_still_cancels_the_upstream_call(
        start: Any, openai_upstream: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    client = await start()
    with capture_logs() as logs:
        async with sdk(client, timeout=0.3) as impatient:
            with pytest.raises(openai.APITimeoutError):
                await impatient.images.generate(**PROMPT)

        async def cancelled() -> None:
            while not any(e.get("outcome") == "cancelled" for e in logs):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(cancelled(), 3)
    assert not client.app[EXACTLY_ONCE].tasks
    assert [e["status"] for e in logs if e["event"] == "request"] == [499]


async def test_a_gateway_shutting_down_finishes_its_detached_requests(
        start: Any, openai_upstream: Any, tmp_path: Any) -> None:
    recorder, _ = openai_upstream
    recorder.gate = asyncio.Event()
    with redis_server(tmp_path) as url:
        leaving, staying = await start(redis_overrides(url)), await start(redis_overrides(url))
        async with sdk(leaving, timeout=0.3) as impatient:
            with pytest.raises(openai.APITimeoutError):
                await impatient.images.generate(**PROMPT, **key())
        closing = asyncio.create_task(leaving.close())  # SIGTERM: cleanup waits for them
        await asyncio.sleep(0.05)
        assert not closing.done()
        recorder.gate.set()
        await closing
        headers, answer = await generate(staying)
        assert len(recorder.requests) == 1 and headers["idempotent-replayed"] == "true"


async def test_a_url_answer_is_kept_no_longer_than_its_links(start: Any) -> None:
    clock = Clock(2_000_000_000.0)
    clock.now = time.time()  # the image store signs links with the real clock
    client = await start(clock=clock)
    body = {"model": "local", "prompt": "kite", "size": "64x64", "response_format": "url"}
    _, first = await generate(client, **body)
    clock.now += 3000  # within storage.ttl_s (3600): replayed
    headers, _ = await generate(client, **body)
    assert headers["idempotent-replayed"] == "true"
    clock.now += 700  # its links have expired: the key runs again, with fresh links
    headers, fresh = await generate(client, **body)
    assert "idempotent-replayed" not in headers and fresh.data[0].url != first.data[0].url


async def test_a_stream_that_broke_midway_releases_the_key(aiohttp_server: Any, tmp_path: Any,
                                                          aiohttp_client: Any) -> None:
    calls = [0]
    app = web.Application()
    app.router.add_post("/images/generations", openai_mock.breaking_stream(calls))
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    config = make_config(tmp_path=tmp_path, providers={
        "flaky": {"type": "openai", "base_url": base, "api_key": "k"}},
        models={"gpt-image-1": {"routes": [{"provider": "flaky"}]}})
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    for attempt in (1, 2):
        async with sdk(client) as api:
            stream = await api.images.generate(**PROMPT, stream=True, **key())
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass
        assert calls[0] == attempt  # nothing was kept: the retry ran again
