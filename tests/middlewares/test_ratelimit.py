"""Per-key limits at admission: sliding windows in requests and images, concurrency slots."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from tests.harness import Clock
from tests.middlewares.usage_app import DAY_START, usage_app, usage_config
from tests.schemas import checked_sdk


def key(limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": "team-a", "key": "team-a", **extra}
    if limits is not None:
        entry["limits"] = limits
    return entry


async def start(aiohttp_client: Any, auth: dict[str, Any], clock: Clock | None = None,
                **kwargs: Any) -> Any:
    app, script, metrics, limiter = usage_app(usage_config(auth, **kwargs), clock)
    client = await aiohttp_client(app)
    client.script, client.metrics = script, metrics
    return client


async def gen(client: Any, token: str = "team-a", **body: Any) -> Any:
    return await client.post("/v1/images/generations", json={"prompt": "p", **body},
                             headers={"Authorization": f"Bearer {token}"})


async def test_requests_per_minute_is_a_sliding_window(aiohttp_client: Any) -> None:
    clock = Clock(DAY_START)
    client = await start(aiohttp_client, {"keys": [key({"requests_per_minute": 3})]}, clock)
    assert (await gen(client)).status == 200
    clock.now += 59  # two more at the end of the first minute
    for left in ("1", "0"):
        resp = await gen(client)
        assert resp.status == 200 and resp.headers["x-ratelimit-remaining-requests"] == left
    assert resp.headers["x-ratelimit-limit-requests"] == "3"
    assert resp.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 1.5  # a fixed window would start afresh here and let 3 more through
    assert (await gen(client)).status == 200  # only the first one has left the last 60 s
    refused = await gen(client)
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "requests_per_minute" in error["message"]
    assert refused.headers["retry-after"] == "59"  # 58.5 s until the first at t=59 leaves
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 58.4
    assert (await gen(client)).status == 429
    clock.now += 0.1
    assert (await gen(client)).status == 200
    sample = client.metrics.registry.get_sample_value(
        "imagegate_rate_limited_total", {"key": "team-a", "limit": "requests_per_minute"})
    assert sample == 2


async def test_images_count_n_and_a_refusal_consumes_nothing(aiohttp_client: Any) -> None:
    clock = Clock(DAY_START)
    client = await start(aiohttp_client, {"keys": [key(
        {"requests_per_minute": 10, "images_per_minute": 5})]}, clock)
    resp = await gen(client, n=3)
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-images"] == "2"
    assert resp.headers["x-ratelimit-remaining-requests"] == "9"
    refused = await gen(client, n=3)
    assert refused.status == 429 and "images_per_minute" in (await refused.json())["error"][
        "message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "9"  # not taken by the refusal
    resp = await gen(client, n=2)
    assert resp.status == 200 and resp.headers["x-ratelimit-remaining-requests"] == "8"
    too_many = await gen(client, n=6)  # no wait would ever admit it
    assert too_many.status == 400 and (await too_many.json())["error"]["param"] == "n"


async def test_model_override_applies_on_top_of_the_keys_limits(aiohttp_client: Any) -> None:
    limits = {"images_per_minute": 10, "models": {"img": {"images_per_minute": 2}}}
    client = await start(aiohttp_client, {"keys": [key(limits)]})
    assert (await gen(client, n=2)).status == 200
    refused = await gen(client, n=1)
    assert refused.status == 429
    assert "models.img.images_per_minute" in (await refused.json())["error"]["message"]
    resp = await gen(client, model="other", n=3)  # the key's own limit still has room
    assert resp.status == 200 and resp.headers["x-ratelimit-remaining-images"] == "5"


async def test_default_limits_cover_keys_without_their_own(aiohttp_client: Any) -> None:
    auth = {"default_limits": {"requests_per_minute": 1},
            "keys": [key(), {"id": "b", "key": "b"}, {"id": "c", "key": "c",
                                                        "limits": {"requests_per_minute": 5}}]}
    client = await start(aiohttp_client, auth)
    assert (await gen(client)).status == 200
    assert (await gen(client)).status == 429  # team-a's own minute
    assert (await gen(client, "b")).status == 200  # each key has its own window
    resp = await gen(client, "c")
    assert resp.status == 200 and resp.headers["x-ratelimit-limit-requests"] == "5"


async def test_an_open_gateway_shares_default_limits(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"default_limits": {"requests_per_minute": 2}})
    assert (await gen(client, "x")).status == 200
    assert (await gen(client, "y")).status == 200
    assert (await gen(client, "z")).status == 429


async def test_the_sdk_raises_rate_limit_error(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"keys": [key({"requests_per_minute": 1})]})
    sdk = checked_sdk(str(client.make_url("/v1")), "team-a")
    await sdk.images.generate(model="img", prompt="p")
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.images.generate(model="img", prompt="p")
    await sdk.close()
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_keys_without_limits_get_no_headers(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"keys": [key(), {"id": "b", "key": "b",
                                                           "limits": {"requests_per_minute": 1}}]})
    resp = await gen(client)
    assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers


# --- concurrency slots -----------------------------------------------------------------------

async def wait_for(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def slots_client(aiohttp_client: Any) -> Any:
    return await start(aiohttp_client, {"keys": [key({"concurrent_requests": 1})]})


async def test_a_slot_is_released_when_the_answer_ends(aiohttp_client: Any) -> None:
    client = await slots_client(aiohttp_client)
    held = asyncio.create_task(gen(client, prompt="hang"))
    await wait_for(lambda: client.script.entered == 1)
    refused = await gen(client)
    assert refused.status == 429 and "concurrent_requests" in (await refused.json())["error"][
        "message"]
    client.script.release.set()
    assert (await held).status == 200
    assert (await gen(client)).status == 200


async def test_a_slot_is_released_when_the_upstream_fails(aiohttp_client: Any) -> None:
    client = await slots_client(aiohttp_client)
    assert (await gen(client, prompt="fail")).status == 502
    assert (await gen(client)).status == 200


@pytest.mark.parametrize("prompt", ["hang", "stream"])
async def test_a_slot_is_released_when_the_client_hangs_up(aiohttp_client: Any,
                                                           prompt: str) -> None:
    client = await slots_client(aiohttp_client)
    url, auth = client.make_url("/v1/images/generations"), {"Authorization": "Bearer team-a"}
    async with aiohttp.ClientSession() as other:  # a client of its own, gone mid-answer
        if prompt == "stream":  # the answer has begun: headers and a first event are out
            first = await other.post(url, json={"prompt": prompt}, headers=auth)
            assert first.status == 200 and await first.content.readline()
            assert (await gen(client)).status == 429  # the slot is held
            first.close()
        else:
            task = asyncio.create_task(other.post(url, json={"prompt": prompt}, headers=auth))
            await wait_for(lambda: client.script.entered == 1)
            assert (await gen(client)).status == 429  # the slot is held
            task.cancel()
    for _ in range(200):  # the handler is cancelled; its slot comes back
        if (await gen(client, prompt="quick")).status == 200:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the slot was never released")
    assert client.script.finished == 1  # only the quick one: the held one never finished
