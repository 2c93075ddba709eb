"""Which limits and budgets apply to a request (pure), and the headers that describe them."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from imagegate.config.prices import MICRO, admission_estimate, to_micro, usd_text
from imagegate.config.schema import AuthConfig, Budget, Limits, ModelLimits, Route
from imagegate.middlewares.limits import Cap, Decision, Plan, Slot, Window

ANONYMOUS = "anonymous"  # the key id of every caller of an open gateway
PREFIX = "imagegate:use:"


@dataclass(frozen=True, slots=True)
class Policy:
    key_id: str
    limits: Limits | None
    budget: Budget | None


def policies(auth: AuthConfig) -> dict[str, Policy]:
    """Key id -> its limits and budget; keys with neither are absent (they cost nothing)."""
    table: dict[str, Policy] = {}
    for key in auth.keys:
        limits = key.limits if key.limits is not None else auth.default_limits
        limits = limits if _limits_set(limits) else None
        budget = key.budget if key.budget is not None and _budget_set(key.budget) else None
        if limits is not None or budget is not None:
            table[key.id] = Policy(key.id, limits, budget)
    if not auth.keys and _limits_set(auth.default_limits):
        table[ANONYMOUS] = Policy(ANONYMOUS, auth.default_limits, None)
    return table


def _limits_set(limits: Limits | None) -> bool:
    return limits is not None and (_model_limits_set(limits) or any(
        _model_limits_set(m) for m in limits.models.values()))


def _model_limits_set(m: ModelLimits) -> bool:
    return any(v is not None for v in (m.requests_per_minute, m.images_per_minute,
                                       m.concurrent_requests))


def _budget_set(b: Budget) -> bool:
    return any(v is not None for v in (b.usd_per_day, b.usd_per_month, b.images_per_day))


class Plans:
    """Plans by what makes them differ; a bounded cache (size and quality come from clients)."""

    MAX = 4096

    def __init__(self) -> None:
        self.cache: dict[tuple[object, ...], Plan] = {}

    def get(self, policy: Policy, model: str, n: int, routes: list[Route], size: str | None,
            quality: str | None, now: float) -> Plan:
        key = (policy.key_id, model, n, size, quality, int(now // 86400))
        plan = self.cache.get(key)
        if plan is None:
            if len(self.cache) >= self.MAX:
                self.cache.clear()
            plan = self.cache[key] = build_plan(policy, model, n, routes, size, quality, now)
        return plan


def build_plan(policy: Policy, model: str, n: int, routes: list[Route], size: str | None,
               quality: str | None, now: float) -> Plan:
    plan = Plan([], [], [])
    base = f"{PREFIX}{{{policy.key_id}}}:"  # hash tag: a key's state sits on one cluster slot
    if policy.limits is not None:
        _add_limits(plan, policy.limits, base, "", n)
        override = policy.limits.models.get(model)
        if override is not None:
            _add_limits(plan, override, f"{base}m:{model}:", f"models.{model}.", n)
    if policy.budget is not None:
        _add_budget(plan, policy.budget, base, admission_estimate(routes, n, size, quality),
                    n, now)
    for kind in ("requests", "images"):
        found = [i for i, w in enumerate(plan.windows) if w.name.endswith(f"{kind}_per_minute")]
        if found:
            plan.groups.append((kind, found))
    return plan


def _add_limits(plan: Plan, limits: ModelLimits, base: str, path: str, n: int) -> None:
    if limits.requests_per_minute is not None:
        plan.windows.append(Window(path + "requests_per_minute", base + "rpm",
                                   limits.requests_per_minute, 1))
    if limits.images_per_minute is not None:
        plan.windows.append(Window(path + "images_per_minute", base + "ipm",
                                   limits.images_per_minute, n))
    if limits.concurrent_requests is not None:
        plan.slots.append(Slot(path + "concurrent_requests", base + "con",
                               limits.concurrent_requests))


def _add_budget(plan: Plan, budget: Budget, base: str, estimate: float, n: int,
                now: float) -> None:
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    next_day = day + dt.timedelta(days=1)
    next_month = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    day_end, month_end = _epoch(next_day), _epoch(next_month)
    reserve = to_micro(estimate)
    if budget.usd_per_day is not None:
        plan.caps.append(Cap("usd_per_day", f"{base}usd:d:{day:%Y%m%d}",
                             to_micro(budget.usd_per_day), reserve, True, day_end))
    if budget.usd_per_month is not None:
        plan.caps.append(Cap("usd_per_month", f"{base}usd:m:{day:%Y%m}",
                             to_micro(budget.usd_per_month), reserve, True, month_end))
    if budget.images_per_day is not None:
        plan.caps.append(Cap("images_per_day", f"{base}img:d:{day:%Y%m%d}",
                             budget.images_per_day, n, False, day_end))


def _epoch(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def never_fits(plan: Plan) -> Window | Cap | None:
    """An image limit smaller than n: no wait would ever admit the request."""
    for w in plan.windows:
        if w.name.endswith("images_per_minute") and w.weight > w.limit:
            return w
    for c in plan.caps:
        if c.name == "images_per_day" and c.reserve > c.limit:
            return c
    return None


def settle_deltas(plan: Plan, cost: float | None, delivered: int) -> list[int]:
    """Turns each reservation into what was delivered: its cost (unknown: nothing) and images."""
    spent = to_micro(cost) if cost is not None else 0
    return [(delivered if c.name == "images_per_day" else spent) - c.reserve for c in plan.caps]


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def usage_headers(decision: Decision) -> dict[str, str]:
    """x-ratelimit-* for the tightest request and image windows, and the budget headers."""
    headers: dict[str, str] = {}
    windows, used = decision.plan.windows, decision.used
    for kind, found in decision.plan.groups:
        i = min(found, key=lambda j: windows[j].limit - used[j])
        headers[f"x-ratelimit-limit-{kind}"] = str(windows[i].limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, windows[i].limit - used[i]))
        headers[f"x-ratelimit-reset-{kind}"] = duration(decision.resets_s[i])
    if decision.plan.caps:
        headers.update(budget_headers(decision.plan.caps, decision.spent))
    return headers


def budget_headers(caps: list[Cap], spent: list[int]) -> dict[str, str]:
    """What is left: the least of the day's and the month's USD, and the day's images."""
    usd = images = None
    for cap, value in zip(caps, spent, strict=True):
        left = max(0, cap.limit - value)
        if cap.name == "images_per_day":
            images = left
        else:
            usd = left if usd is None else min(usd, left)
    headers = {}
    if usd is not None:
        headers["x-imagegate-budget-remaining-usd"] = usd_text(usd / MICRO)
    if images is not None:
        headers["x-imagegate-budget-remaining-images"] = str(images)
    return headers


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
