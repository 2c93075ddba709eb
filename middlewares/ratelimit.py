"""Usage control: per-key limits and budgets at admission; cost and spend once answered."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.prices import MICRO, answer_cost, usd_text
from imagegate.config.schema import AuthConfig
from imagegate.middlewares.keys import PARSED, record_of
from imagegate.middlewares.limits import Cap, Decision, Limiter, Slot, Window
from imagegate.middlewares.metrics import Metrics
from imagegate.middlewares.plans import (
    ANONYMOUS,
    Plans,
    Policy,
    budget_headers,
    never_fits,
    policies,
    retry_after,
    settle_deltas,
    usage_headers,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[..., Awaitable[web.StreamResponse]]


def ratelimit_middleware(auth: AuthConfig, limiter: Limiter | None,
                         metrics: Metrics) -> Middleware:
    """`limiter` None: nothing is limited, answers are only priced."""
    table = policies(auth) if limiter is not None else {}  # a key absent here: no admission
    plans = Plans()

    @web.middleware
    async def ratelimit_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        if PARSED not in request:
            return await handler(request)
        policy = table.get(record_of(request).key_id or ANONYMOUS)
        if policy is None:
            try:
                response = await handler(request)
            finally:
                cost = record_cost(request, metrics)
            if cost is not None and not response.prepared:
                response.headers["x-imagegate-cost-usd"] = usd_text(cost)
            return response
        assert limiter is not None
        return await _admitted(request, handler, policy, plans, limiter, metrics)

    return ratelimit_mw


async def _admitted(request: web.Request, handler: Handler, policy: Policy, plans: Plans,
                    limiter: Limiter, metrics: Metrics) -> web.StreamResponse:
    parsed = request[PARSED]
    body = parsed.body
    plan = plans.get(policy, parsed.public_model, parsed.n, parsed.model_config.routes,
                     getattr(body, "size", None), getattr(body, "quality", None),
                     limiter.clock())
    impossible = never_fits(plan)
    if impossible is not None:
        raise GatewayError("invalid_value", f"n={parsed.n} is more than the key "
                           f"'{policy.key_id}' may ever get at once ({impossible.name} is "
                           f"{impossible.limit}).", param="n")
    decision = await limiter.admit(plan)
    headers = record_of(request).usage_headers = usage_headers(decision)  # every answer, errors too
    if decision.refused is not None:
        record_budget(metrics, policy.key_id, decision.plan.caps, decision.spent)
        refused = decision.refused
        metrics.add(metrics.rate_limited, policy.key_id, refused.name.rsplit(".", 1)[-1])
        code = "budget_exceeded" if isinstance(refused, Cap) else "rate_limit_exceeded"
        raise GatewayError(code, refusal_message(policy, decision),
                           headers={"retry-after": retry_after(decision.retry_after_s)})
    try:
        response = await handler(request)
    finally:
        cost = record_cost(request, metrics)
        outcome = record_of(request).outcome
        deltas = settle_deltas(plan, cost, outcome.images if outcome is not None else 0)
        await limiter.finish(decision, deltas)
        spent = [v + d for v, d in zip(decision.spent, deltas, strict=True)]
        if plan.caps:
            record_budget(metrics, policy.key_id, plan.caps, spent)
    if not response.prepared:  # a streamed answer went out with the admission's figures
        if plan.caps:
            headers.update(budget_headers(plan.caps, spent))
        if cost is not None:
            headers["x-imagegate-cost-usd"] = usd_text(cost)
    return response


def record_budget(metrics: Metrics, key_id: str, caps: list[Cap], spent: list[int]) -> None:
    """What is left of each budget (USD or images) as of this answer, for /status and alerts."""
    for cap, value in zip(caps, spent, strict=True):
        scale = 1 if cap.name == "images_per_day" else MICRO
        metrics.child(metrics.budget_limit, key_id, cap.name).set(cap.limit / scale)
        metrics.child(metrics.budget_remaining, key_id, cap.name).set(
            max(0, cap.limit - value) / scale)


def record_cost(request: web.Request, metrics: Metrics) -> float | None:
    """The answer's cost into the metrics and the request's record (for the access log)."""
    record = record_of(request)
    outcome = record.outcome
    if outcome is None:
        return None
    model = request[PARSED].public_model
    cost = answer_cost(outcome.route, outcome.images, outcome.usage, outcome.size,
                       outcome.quality)
    if cost is None:
        metrics.add(metrics.unpriced, model, outcome.provider)
        return None
    record.cost_usd = cost
    metrics.add(metrics.cost, record.key_id or ANONYMOUS, model, outcome.provider, amount=cost)
    return cost


def refusal_message(policy: Policy, decision: Decision) -> str:
    refused, wait = decision.refused, retry_after(decision.retry_after_s)
    who = f"the key '{policy.key_id}'"
    if isinstance(refused, Window):
        i = decision.plan.windows.index(refused)
        return (f"Rate limit reached for {who} on {refused.name}: limit {refused.limit}, used "
                f"{decision.used[i]}, requested {refused.weight}. Please try again in {wait}s.")
    if isinstance(refused, Slot):
        return (f"Too many concurrent requests for {who}: {refused.name} is {refused.limit}. "
                f"Please try again when one of them has finished.")
    assert isinstance(refused, Cap)
    i = decision.plan.caps.index(refused)
    if refused.name == "images_per_day":
        left = f"{max(0, refused.limit - decision.spent[i])} of {refused.limit} images are left"
    else:
        left = (f"${usd_text(max(0, refused.limit - decision.spent[i]) / 1e6)} of "
                f"${usd_text(refused.limit / 1e6)} is left")
        if refused.reserve:
            left += f", this request may cost up to ${usd_text(refused.reserve / 1e6)}"
    return (f"Budget exceeded for {who} on {refused.name}: {left}. It resets in {wait}s "
            f"(UTC calendar window).")


async def apply_usage_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the limit and budget headers on every answer, streams and errors."""
    headers = record_of(request).usage_headers
    if headers:
        response.headers.update(headers)
