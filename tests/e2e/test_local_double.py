"""The `local` provider as a test double: route latency and faults behave as the same errors
from a real provider (fallback, rests, metrics); answers shaped like gpt-image-1's."""
from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from imagegate.config.loader import ConfigError, parse_config
from imagegate.middlewares.metrics import Metrics
from imagegate.proxy.app import create_app
from imagegate.proxy.routing import Router
from prometheus_client import CollectorRegistry

from tests.conftest import make_config
from tests.harness import Clock
from tests.schemas import checked_sdk

BODY = {"model": "m", "prompt": "p", "size": "16x16"}


def double(route: dict[str, Any], fallback: bool = True, **overrides: Any) -> Any:
    routes = [{"provider": "local", **route}]
    if fallback:
        routes.append({"provider": "spare", "priority": 1})
    return make_config({"providers": {"local": {"type": "local"}, "spare": {"type": "local"}},
                        **overrides}, models={"m": {"routes": routes}})


async def start(aiohttp_client: Any, config: Any) -> tuple[Any, Clock, CollectorRegistry]:
    clock, registry = Clock(100.0), CollectorRegistry()
    router = Router(config, Metrics(registry), clock=clock)
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry(),
                                             router=router))
    return client, clock, registry


async def test_every_nth_attempt_fails_and_falls_back(gateway: Any) -> None:
    client = await gateway(double({"fail": {"every": 2, "with": "upstream_unavailable"}}))
    served = []
    for _ in range(4):
        resp = await client.post("/v1/images/generations", json=BODY)
        assert resp.status == 200
        served.append((resp.headers["x-imagegate-provider"], resp.headers["x-imagegate-attempts"]))
    assert served == [("local", "1"), ("spare", "2"), ("local", "1"), ("spare", "2")]
    reg = client.registry
    assert reg.get_sample_value("imagegate_upstream_requests_total", {
        "provider": "local", "model": "m", "outcome": "server_error"}) == 2
    assert reg.get_sample_value("imagegate_retries_total", {"provider": "spare"}) == 2


async def test_failures_rest_the_route_like_a_real_provider(aiohttp_client: Any) -> None:
    config = double({"fail": {"every": 1, "with": "upstream_timeout"}},
                    routing={"cooldown_s": 30})
    client, clock, health = await start(aiohttp_client, config)
    for _ in range(4):
        resp = await client.post("/v1/images/generations", json=BODY)
        assert resp.status == 200 and resp.headers["x-imagegate-provider"] == "spare"
    assert [resp.headers["x-imagegate-attempts"]] == ["1"]  # the fourth skipped the rested one
    assert health.get_sample_value("imagegate_route_healthy",
                                   {"provider": "local", "model": "m"}) == 0


async def test_rate_limited_with_retry_after_rests_that_long(aiohttp_client: Any) -> None:
    config = double({"fail": {"every": 1, "with": "upstream_rate_limited",
                              "retry_after_s": 5}}, fallback=False)
    client, clock, _ = await start(aiohttp_client, config)
    resp = await client.post("/v1/images/generations", json=BODY)
    error = (await resp.json())["error"]
    assert resp.status == 429 and error["code"] == "upstream_rate_limited"
    assert resp.headers["retry-after"] == "5"
    clock.now += 4.9
    resp = await client.post("/v1/images/generations", json=BODY)
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "upstream_unavailable"
    clock.now += 0.2  # rested: the next request probes it (and fails again, every: 1)
    assert (await client.post("/v1/images/generations", json=BODY)).status == 429


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("upstream_unavailable", 502, "upstream_unavailable"),
    ("upstream_timeout", 504, "upstream_timeout"),
    ("content_policy_violation", 400, "content_policy_violation"),
    ("no_image", 502, "no_image"),
])
async def test_each_fault_answers_as_the_real_error(gateway: Any, fault: str, status: int,
                                                    code: str) -> None:
    client = await gateway(double({"fail": {"every": 1, "with": fault}}, fallback=False))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.images.generate(model="m", prompt="p", size="16x16")
    finally:
        await sdk.close()
    assert info.value.status_code == status and info.value.body["code"] == code


async def test_a_safety_refusal_is_not_retried_on_the_next_route(gateway: Any) -> None:
    client = await gateway(double({"fail": {"every": 1, "with": "content_policy_violation"}}))
    resp = await client.post("/v1/images/generations", json=BODY)
    assert resp.status == 400
    assert client.registry.get_sample_value("imagegate_upstream_requests_total", {
        "provider": "spare", "model": "m", "outcome": "ok"}) is None


async def test_rate_faults_are_the_same_sequence_for_the_same_seed(gateway: Any) -> None:
    async def sequence(seed: int) -> list[int]:
        client = await gateway(double({"fail": {"rate": 0.5, "seed": seed,
                                                "with": "upstream_unavailable"}},
                                      fallback=False))
        return [(await client.post("/v1/images/generations", json=BODY)).status
                for _ in range(12)]

    first, again, other = await sequence(7), await sequence(7), await sequence(8)
    assert first == again and first != other
    assert 0 < first.count(502) < 12


async def test_latency_fixed_and_ranged(gateway: Any) -> None:
    for latency, low in ((0.15, 0.15), ([0.05, 0.1], 0.05)):
        client = await gateway(double({"latency_s": latency}, fallback=False))
        started = time.perf_counter()
        assert (await client.post("/v1/images/generations", json=BODY)).status == 200
        assert time.perf_counter() - started >= low


async def test_answers_are_shaped_like_gpt_image_1(gateway: Any) -> None:
    client = await gateway(make_config())
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    try:
        result = await sdk.images.generate(model="local", prompt="a kite", size="1024x1536",
                                           quality="low", output_format="webp", n=2)
    finally:
        await sdk.close()
    assert (result.size, result.quality, result.output_format, result.background) == (
        "1024x1536", "low", "webp", "opaque")
    usage = result.usage
    assert usage.input_tokens_details.text_tokens == 2
    assert usage.output_tokens == 2 * 408  # gpt-image-1: 272 for 1024x1024 low, by pixels
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_test_double_options_are_for_local_routes_only() -> None:
    providers = {"local": {"type": "local"},
                 "openai": {"type": "openai", "api_key": "sk-x"}}
    cases = [
        ({"provider": "openai", "latency_s": 1}, "models.m.routes[0].latency_s"),
        ({"provider": "local", "fail": {"with": "no_image"}}, "models.m.routes[0].fail"),
        ({"provider": "local", "fail": {"every": 1, "rate": 0.5, "with": "no_image"}},
         "models.m.routes[0].fail"),
        ({"provider": "local", "latency_s": [2, 1]}, "models.m.routes[0].latency_s"),
        ({"provider": "local", "fail": {"every": 1, "with": "boom"}},
         "models.m.routes[0].fail.with"),
    ]
    for route, path in cases:
        with pytest.raises(ConfigError) as info:
            parse_config({"providers": providers, "models": {"m": {"routes": [route]}}}, env={})
        assert str(info.value).startswith(path), str(info.value)
