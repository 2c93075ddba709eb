"""Prices, cost and budgets: what an answer costs, and spend caps over UTC calendar windows."""
from __future__ import annotations

from typing import Any

import openai
import pytest
from structlog.testing import capture_logs

from tests.harness import Clock
from tests.middlewares.test_ratelimit import gen
from tests.middlewares.usage_app import DAY_START, usage_app, usage_config
from tests.schemas import checked_sdk

TABLE = {"per_image": {"1024x1024/low": 0.011, "1024x1024/high": 0.167, "*/medium": 0.063,
                       "*": 0.25}}
TOKENS = {"tokens": {"input_text": 5.0, "input_image": 10.0, "output": 40.0}}
# the scripted answer's usage: 10 text + 40 image input tokens, 4160 output tokens
TOKEN_COST = (10 * 5.0 + 40 * 10.0 + 4160 * 40.0) / 1_000_000
DAY = 86400.0


async def start(aiohttp_client: Any, price: dict[str, Any] | None, budget: dict[str, Any] | None
                = None, clock: Clock | None = None) -> Any:
    entry: dict[str, Any] = {"id": "team-a", "key": "team-a"}
    if budget is not None:
        entry["budget"] = budget
    app, script, metrics, _ = usage_app(usage_config({"keys": [entry]}, price), clock)
    client = await aiohttp_client(app)
    client.metrics = metrics
    return client


@pytest.mark.parametrize(("body", "expected"), [
    ({"size": "1024x1024", "quality": "low", "n": 2}, 2 * 0.011),
    ({"size": "1024x1024", "quality": "high"}, 0.167),
    ({"size": "1536x1024", "quality": "medium"}, 0.063),
    ({"size": "1024x1024", "quality": "medium"}, 0.063),
    ({}, 0.25),  # size and quality omitted: only "*" matches
    ({"size": "1024x1024", "quality": "low", "n": 3, "prompt": "partial"}, 2 * 0.011),
])
async def test_a_price_table_charges_the_images_delivered(aiohttp_client: Any,
                                                          body: dict[str, Any],
                                                          expected: float) -> None:
    client = await start(aiohttp_client, TABLE)
    with capture_logs() as logs:
        resp = await gen(client, **body)
    assert resp.status == 200
    assert float(resp.headers["x-imagegate-cost-usd"]) == pytest.approx(expected)
    line = next(e for e in logs if e["event"] == "request")
    assert line["cost_usd"] == pytest.approx(expected)
    sample = client.metrics.registry.get_sample_value(
        "imagegate_cost_usd_total", {"key": "team-a", "model": "img", "provider": "local"})
    assert sample == pytest.approx(expected)


async def test_token_rates_read_the_reported_usage(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, TOKENS)
    resp = await gen(client)
    assert resp.headers["x-imagegate-cost-usd"] == "0.16685"
    assert TOKEN_COST == pytest.approx(0.16685)


async def test_an_unpriced_route_is_unknown_not_free(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, None)
    with capture_logs() as logs:
        resp = await gen(client)
    assert resp.status == 200 and "x-imagegate-cost-usd" not in resp.headers
    assert next(e for e in logs if e["event"] == "request")["cost_usd"] is None
    registry = client.metrics.registry
    assert registry.get_sample_value("imagegate_unpriced_requests_total",
                                     {"model": "img", "provider": "local"}) == 1
    assert registry.get_sample_value("imagegate_cost_usd_total",
                                     {"key": "team-a", "model": "img", "provider": "local"}) is None


async def test_a_daily_budget_refuses_what_cannot_fit_until_midnight(aiohttp_client: Any) -> None:
    clock = Clock(DAY_START)
    clock.now += 20 * 3600  # 2026-12-01T20:00:00Z
    client = await start(aiohttp_client, {"per_image": 0.2}, {"usd_per_day": 0.5}, clock)
    resp = await gen(client, n=2)
    assert resp.status == 200 and resp.headers["x-imagegate-budget-remaining-usd"] == "0.1"
    refused = await gen(client)  # 0.2 more cannot fit in the 0.1 left
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert refused.headers["retry-after"] == str(4 * 3600)
    assert refused.headers["x-imagegate-budget-remaining-usd"] == "0.1"
    sdk = checked_sdk(str(client.make_url("/v1")), "team-a")
    with pytest.raises(openai.RateLimitError):
        await sdk.images.generate(model="img", prompt="p")
    clock.now += 4 * 3600  # the next UTC day
    result = await sdk.images.generate(model="img", prompt="p", n=2)
    await sdk.close()
    assert len(result.data) == 2


async def test_failed_and_partial_answers_cost_only_what_was_delivered(
        aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, {"per_image": 0.2}, {"usd_per_day": 1,
                                                               "images_per_day": 10})
    assert (await gen(client, prompt="fail", n=3)).status == 502
    resp = await gen(client, prompt="partial", n=3)  # 2 of 3 delivered
    assert resp.headers["x-imagegate-cost-usd"] == "0.4"
    assert resp.headers["x-imagegate-budget-remaining-usd"] == "0.6"
    assert resp.headers["x-imagegate-budget-remaining-images"] == "8"


async def test_images_per_day_counts_n(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, None, {"images_per_day": 3})
    assert (await gen(client, n=2)).headers["x-imagegate-budget-remaining-images"] == "1"
    refused = await gen(client, n=2)
    assert refused.status == 429 and "images_per_day" in (await refused.json())["error"][
        "message"]
    assert (await gen(client, n=1)).status == 200


async def test_token_priced_routes_run_until_nothing_is_left(aiohttp_client: Any) -> None:
    client = await start(aiohttp_client, TOKENS, {"usd_per_day": 0.2})
    first = await gen(client)
    assert first.headers["x-imagegate-budget-remaining-usd"] == "0.03315"
    assert (await gen(client)).status == 200  # something was left: the cost is known after
    refused = await gen(client)
    assert refused.status == 429 and refused.headers["x-imagegate-budget-remaining-usd"] == "0"


async def test_a_monthly_budget_resets_on_the_first(aiohttp_client: Any) -> None:
    clock = Clock(1_798_675_200.0 + 23 * 3600)  # 2026-12-31T23:00:00Z
    client = await start(aiohttp_client, {"per_image": 1.0}, {"usd_per_month": 1}, clock)
    assert (await gen(client)).status == 200
    refused = await gen(client)
    assert refused.status == 429 and refused.headers["retry-after"] == "3600"
    clock.now += 3600
    assert (await gen(client)).status == 200
