"""Usage control end to end with the official SDK: limits, budgets and cost on real routes."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest
from structlog.testing import capture_logs

from tests.conftest import make_config
from tests.harness import Clock
from tests.middlewares.usage_app import DAY_START
from tests.schemas import checked_sdk
from tests.upstreams.openai import API_KEY

TOKENS = {"tokens": {"input_text": 5.0, "input_image": 10.0, "output": 40.0}}
TABLE = {"per_image": {"1024x1024/low": 0.011, "1024x1024/high": 0.167, "*/medium": 0.063,
                       "*": 0.25}}
KEY = "ig-team-a"


def config(base: str, key: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
           ) -> Any:
    providers = {"openai": {"type": "openai", "base_url": base, "api_key": API_KEY}}
    models = {"gpt-image-1": {"routes": [{"provider": "openai", "price": TOKENS}]},
              "house": {"routes": [{"provider": "openai", "model": "gpt-image-1",
                                    "price": TABLE}]},
              "free": {"routes": [{"provider": "openai", "model": "gpt-image-1"}]}}
    entry = {"id": "team-a", "key": KEY, **(key or {})}
    return make_config({"auth": {"keys": [entry]}, "state": state or {}},
                       providers=providers, models=models)


def sdk(client: Any) -> openai.AsyncOpenAI:
    return checked_sdk(str(client.make_url("/v1")), KEY)


def sample(client: Any, name: str, **labels: str) -> float | None:
    value: float | None = client.registry.get_sample_value(name, labels)
    return value


async def test_openai_answers_are_priced_from_their_usage_and_images(
        gateway: Any, openai_upstream: Any) -> None:
    _, base = openai_upstream
    client = await gateway(config(base))
    api = sdk(client)
    with capture_logs() as logs:
        raw = await api.images.with_raw_response.generate(model="gpt-image-1", prompt="otter")
        table = await api.images.with_raw_response.generate(
            model="house", prompt="otter", n=2, size="1024x1024", quality="high")
        free = await api.images.with_raw_response.generate(model="free", prompt="otter")
    await api.close()
    # 10 text + 40 image input tokens at $5 and $10 per million, 4160 output tokens at $40
    assert raw.headers["x-imagegate-cost-usd"] == "0.16685"
    assert table.headers["x-imagegate-cost-usd"] == "0.334"  # two images at $0.167
    assert "x-imagegate-cost-usd" not in free.headers
    costs = [e["cost_usd"] for e in logs if e["event"] == "request"]
    assert costs == [pytest.approx(0.16685), pytest.approx(0.334), None]
    assert sample(client, "imagegate_cost_usd_total", key="team-a", model="house",
                  provider="openai") == pytest.approx(0.334)
    assert sample(client, "imagegate_unpriced_requests_total", model="free",
                  provider="openai") == 1


async def test_a_stream_is_priced_from_its_completed_events(gateway: Any,
                                                             openai_upstream: Any) -> None:
    _, base = openai_upstream
    client = await gateway(config(base))
    api = sdk(client)
    with capture_logs() as logs:
        stream = await api.images.generate(model="gpt-image-1", prompt="otter", stream=True)
        kinds = [event.type async for event in stream]
    await api.close()
    assert kinds[-1] == "image_generation.completed"
    line = next(e for e in logs if e["event"] == "request")
    assert line["cost_usd"] == pytest.approx((5 * 5.0 + 5 * 40.0) / 1e6)
    assert line["images"] == 1


async def test_limits_answer_with_openais_headers_and_errors(gateway: Any,
                                                             openai_upstream: Any) -> None:
    _, base = openai_upstream
    client = await gateway(config(base, {"limits": {"requests_per_minute": 5,
                                                    "images_per_minute": 3}}))
    api = sdk(client)
    raw = await api.images.with_raw_response.generate(model="free", prompt="otter", n=2)
    assert raw.headers["x-ratelimit-limit-images"] == "3"
    assert raw.headers["x-ratelimit-remaining-images"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "4"
    assert len(raw.parse().data) == 2
    with pytest.raises(openai.RateLimitError) as caught:
        await api.images.generate(model="free", prompt="otter", n=2)
    await api.close()
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "60"
    assert sample(client, "imagegate_rate_limited_total", key="team-a",
                  limit="images_per_minute") == 1


async def test_a_budget_refuses_then_resets_the_next_day(gateway: Any,
                                                         openai_upstream: Any) -> None:
    _, base = openai_upstream
    clock = Clock(DAY_START + 22 * 3600)  # 2026-12-01T22:00:00Z
    client = await gateway(config(base, {"budget": {"usd_per_day": 0.5}}), clock=clock)
    api = sdk(client)
    raw = await api.images.with_raw_response.generate(model="house", prompt="o", n=2,
                                                      size="1024x1024", quality="high")
    assert raw.headers["x-imagegate-budget-remaining-usd"] == "0.166"
    with pytest.raises(openai.RateLimitError) as caught:
        await api.images.generate(model="house", prompt="o", size="1024x1024", quality="high")
    assert caught.value.code == "budget_exceeded" and caught.value.type == "insufficient_quota"
    assert caught.value.response.headers["retry-after"] == str(2 * 3600)
    clock.now += 2 * 3600
    result = await api.images.generate(model="house", prompt="o", size="1024x1024",
                                       quality="high")
    await api.close()
    assert len(result.data) == 1


async def one_slot(gateway: Any, base: str) -> Any:
    return await gateway(config(base, {"limits": {"concurrent_requests": 1}}))


async def admitted_soon(client: Any) -> bool:
    api = sdk(client)
    try:
        for _ in range(200):
            try:
                await api.images.generate(model="free", prompt="otter")
                return True
            except openai.RateLimitError:
                await asyncio.sleep(0.01)
        return False
    finally:
        await api.close()


async def test_a_slot_comes_back_after_an_upstream_failure(gateway: Any,
                                                           openai_upstream: Any) -> None:
    recorder, base = openai_upstream
    client = await one_slot(gateway, base)
    recorder.mode = "server_error"
    api = sdk(client)
    with pytest.raises(openai.APIStatusError):
        await api.images.generate(model="free", prompt="otter")
    await api.close()
    recorder.mode = "ok"
    assert await admitted_soon(client)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_slot_comes_back_when_the_client_hangs_up(gateway: Any, openai_upstream: Any,
                                                          stream: bool) -> None:
    recorder, base = openai_upstream
    client = await one_slot(gateway, base)
    if stream:
        recorder.stream_gap_s = 30  # the upstream pauses after the first event
    else:
        recorder.delay_s = 30  # the upstream has not answered yet
    url = client.make_url("/v1/images/generations")
    body = {"model": "free", "prompt": "otter", "stream": stream}
    async with aiohttp.ClientSession() as session:
        if stream:
            resp = await session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert await resp.content.readline()  # the answer has begun
        else:
            task = asyncio.create_task(session.post(
                url, json=body, headers={"Authorization": f"Bearer {KEY}"}))
            while not recorder.requests:
                await asyncio.sleep(0.005)
        api = sdk(client)
        with pytest.raises(openai.RateLimitError):  # held by the request in flight
            await api.images.generate(model="free", prompt="otter")
        await api.close()
        if stream:
            resp.close()
        else:
            task.cancel()
    recorder.delay_s, recorder.stream_gap_s = 0, 0.01
    assert await admitted_soon(client)


async def test_two_gateways_on_one_redis_split_a_limit_and_survive_its_loss(
        gateway: Any, openai_upstream: Any, tmp_path: Any) -> None:
    from tests.redis_server import redis_server

    _, base = openai_upstream
    with redis_server(tmp_path) as url:
        cfg = config(base, {"limits": {"requests_per_minute": 2}},
                     {"backend": "redis", "redis_url": url})
        first, second = await gateway(cfg), await gateway(cfg)
        a, b = sdk(first), sdk(second)
        await a.images.generate(model="free", prompt="otter")
        await b.images.generate(model="free", prompt="otter")
        with pytest.raises(openai.RateLimitError):
            await a.images.generate(model="free", prompt="otter")
    # Redis is gone; `open` (the default): each gateway limits on its own and says so
    await b.images.generate(model="free", prompt="otter")
    ready = await second.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "degraded"
    await a.close()
    await b.close()


async def test_redis_lost_with_on_redis_error_closed_refuses(gateway: Any, openai_upstream: Any,
                                                             tmp_path: Any) -> None:
    from tests.redis_server import redis_server

    _, base = openai_upstream
    with redis_server(tmp_path) as url:
        client = await gateway(config(base, {"limits": {"requests_per_minute": 5}},
                                      {"backend": "redis", "redis_url": url,
                                       "on_redis_error": "closed"}))
        api = sdk(client)
        await api.images.generate(model="free", prompt="otter")
    with pytest.raises(openai.InternalServerError) as caught:
        await api.images.generate(model="free", prompt="otter")
    assert caught.value.status_code == 503 and caught.value.code == "upstream_unavailable"
    assert (await client.get("/readyz")).status == 503
    await api.close()  # recovery without a restart: tests/middlewares/test_limits_redis.py
