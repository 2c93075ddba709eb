"""GET /status.json and /status: models and route health, provider concurrency, 5-minute rates
and latencies per model, per-key usage today; read from the metrics, so several workers show the
whole machine as /metrics does."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web
from imagegate.proxy.gateway import Gateway
from imagegate.proxy.routing import Health
from prometheus_client import CollectorRegistry

from imagegate import __version__

Labels = tuple[tuple[str, str], ...]
Snapshot = dict[tuple[str, Labels], float]
WINDOW_S = 300.0
IMAGES_ENDPOINTS = "/v1/images/"
FAMILIES = ("imagegate_requests_total", "imagegate_request_duration_seconds_bucket",
            "imagegate_images_total", "imagegate_key_images_total", "imagegate_cost_usd_total",
            "imagegate_route_healthy", "imagegate_upstream_in_flight",
            "imagegate_budget_remaining")


class RouteStatus(msgspec.Struct, kw_only=True):
    provider: str
    provider_model: str
    priority: int
    weight: float
    state: str  # healthy | resting | probing
    resting_until: str | None = None  # UTC, ISO 8601
    last_failure: str | None = None  # the outcome of the pair's last failure
    last_failure_at: str | None = None


class ModelStatus(msgspec.Struct, kw_only=True):
    name: str
    aliases: list[str]
    routes: list[RouteStatus]
    requests_per_min: float
    images_per_min: float
    p50_s: float | None
    p95_s: float | None
    error_share: dict[str, float]  # HTTP status code -> share of the model's answers


class ProviderStatus(msgspec.Struct, kw_only=True):
    name: str
    type: str
    in_flight: int
    max_concurrency: int  # per worker process


class KeyStatus(msgspec.Struct, kw_only=True):
    id: str
    requests_today: int
    images_today: int
    cost_usd_today: float | None  # None: nothing priced was served to it today
    budget: dict[str, float] = {}  # as configured: usd_per_day, usd_per_month, images_per_day
    budget_left: dict[str, float] = {}  # the same budgets' rest, as of the key's last answer


class Status(msgspec.Struct, kw_only=True):
    version: str
    started_at: str
    uptime_s: float
    generated_at: str
    workers: int
    window_s: float  # the span the rates and latencies cover (up to 5 minutes)
    models: list[ModelStatus]
    providers: list[ProviderStatus]
    keys: list[KeyStatus]


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def read(registry: CollectorRegistry) -> Snapshot:
    out: Snapshot = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name in FAMILIES:
                key = (s.name, tuple(sorted(s.labels.items())))
                out[key] = out.get(key, 0.0) + s.value
    return out


def everything(labels: dict[str, str]) -> bool:
    return True


def images_only(labels: dict[str, str]) -> bool:
    return labels.get("endpoint", "").startswith(IMAGES_ENDPOINTS)


def sum_by(snap: Snapshot, name: str, by: tuple[str, ...],
           keep: Callable[[dict[str, str]], bool] = everything) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in snap.items():
        if sample != name:
            continue
        d = dict(labels)
        if keep(d):
            group = tuple(d.get(b, "") for b in by)
            out[group] = out.get(group, 0.0) + value
    return out


def delta(now: dict[Any, float], then: dict[Any, float]) -> dict[Any, float]:
    return {k: max(0.0, v - then.get(k, 0.0)) for k, v in now.items()}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (upper bound -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class StatusBoard:
    """Keeps counter snapshots for the 5-minute window and the UTC day; renders Status."""

    def __init__(self, current: Callable[[], Gateway], registry: CollectorRegistry, *,
                 workers: int = 1, clock: Callable[[], float] = time.time,
                 sample_s: float = 10.0) -> None:
        self.current, self.registry, self.workers = current, registry, workers
        self.clock, self.sample_s = clock, sample_s
        self.started = clock()
        self.window: deque[tuple[float, Snapshot]] = deque([(self.started, {})])
        self.day: tuple[dt.date, Snapshot] = (self._date(self.started), {})  # at 00:00 UTC

    def _date(self, ts: float) -> dt.date:
        return dt.datetime.fromtimestamp(ts, dt.UTC).date()

    def set_gauges(self) -> None:
        gw = self.current()
        m = gw.metrics
        for name, state in gw.upstream.providers.items():
            m.child(m.upstream_in_flight, name).set(state.in_flight)

    def sample(self) -> tuple[float, Snapshot]:
        self.set_gauges()
        now = self.clock()
        snap = read(self.registry)
        if self._date(now) != self.day[0]:
            self.day = (self._date(now), snap)
        while len(self.window) > 1 and self.window[1][0] <= now - WINDOW_S:
            self.window.popleft()
        return now, snap

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: a snapshot every sample_s; the in-flight gauges every second."""
        async def loop() -> None:
            last = self.clock()
            while True:
                await asyncio.sleep(1.0)
                self.set_gauges()
                if self.clock() - last >= self.sample_s:
                    self.window.append(self.sample())
                    last = self.clock()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def status(self) -> Status:
        now, snap = self.sample()
        then_t, then = self.window[0]
        span = max(now - then_t, 1.0)
        gw = self.current()
        return Status(
            version=__version__, started_at=iso(self.started), uptime_s=round(now - self.started),
            generated_at=iso(now), workers=self.workers, window_s=round(span),
            models=self._models(gw, snap, then, span, now),
            providers=self._providers(gw, snap),
            keys=self._keys(gw, delta(snap, self.day[1]), snap),
        )

    def _models(self, gw: Gateway, snap: Snapshot, then: Snapshot, span: float,
                now: float) -> list[ModelStatus]:
        def grew(name: str, by: tuple[str, ...], keep: Callable[[dict[str, str]], bool]
                 = everything) -> dict[tuple[str, ...], float]:
            return delta(sum_by(snap, name, by, keep), sum_by(then, name, by, keep))

        by_status = grew("imagegate_requests_total", ("model", "status"), images_only)
        images = grew("imagegate_images_total", ("model",))
        buckets = grew("imagegate_request_duration_seconds_bucket", ("model", "le"), images_only)
        health = sum_by(snap, "imagegate_route_healthy", ("provider", "model"))
        out = []
        for name, model in gw.config.models.items():
            statuses = {s: v for (m, s), v in by_status.items() if m == name}
            total = sum(statuses.values())
            hist = {float(le): v for (m, le), v in buckets.items() if m == name}
            out.append(ModelStatus(
                name=name, aliases=list(model.aliases),
                routes=[route_status(s.route, s.health, health, gw, now)
                        for s in gw.router.routes.get(name, [])],
                requests_per_min=round(total * 60 / span, 2),
                images_per_min=round(images.get((name,), 0.0) * 60 / span, 2),
                p50_s=_round(quantile(0.5, hist)), p95_s=_round(quantile(0.95, hist)),
                error_share={s: round(v / total, 4) for s, v in sorted(statuses.items())
                             if total and s >= "400"},
            ))
        return out

    def _providers(self, gw: Gateway, snap: Snapshot) -> list[ProviderStatus]:
        in_flight = sum_by(snap, "imagegate_upstream_in_flight", ("provider",))
        return [ProviderStatus(name=name, type=p.type,
                               in_flight=int(in_flight.get((name,), 0)),
                               max_concurrency=p.max_concurrency)
                for name, p in gw.config.providers.items()]

    def _keys(self, gw: Gateway, today: Snapshot, snap: Snapshot) -> list[KeyStatus]:
        api = sum_by(today, "imagegate_requests_total", ("key",),
                     lambda labels: labels.get("endpoint", "").startswith("/v1/"))
        images = sum_by(today, "imagegate_key_images_total", ("key",))
        cost = sum_by(today, "imagegate_cost_usd_total", ("key",))
        if not gw.config.auth.keys:  # an open gateway: every caller is one
            for table in (api, images, cost):
                if ("-",) in table:
                    table[("anonymous",)] = table.get(("anonymous",), 0.0) + table.pop(("-",))
        left = sum_by(snap, "imagegate_budget_remaining", ("key", "budget"))
        budgets = {k.id: {n: v for n, v in msgspec.structs.asdict(k.budget).items()
                          if v is not None} for k in gw.config.auth.keys if k.budget}
        out = []
        for i in [k.id for k in gw.config.auth.keys] or ["anonymous"]:
            budget = budgets.get(i, {})
            out.append(KeyStatus(
                id=i, requests_today=int(api.get((i,), 0)), images_today=int(images.get((i,), 0)),
                cost_usd_today=round(cost[(i,)], 6) if (i,) in cost else None, budget=budget,
                budget_left={n: round(left[(i, n)], 6) for n in budget if (i, n) in left}))
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def route_status(route: Any, health: Health, machine: dict[tuple[str, ...], float],
                 gw: Gateway, now: float) -> RouteStatus:
    """This process's view of the pair, marked resting too when another worker rests it."""
    clock = gw.router.clock()
    state, until = "healthy", None
    if health.resting_until > clock:
        state, until = "resting", iso(now + health.resting_until - clock)
    elif health.half_open:
        state = "probing"
    elif machine.get((health.provider, health.model), 1.0) < 1:
        state = "resting"
    return RouteStatus(
        provider=route.provider, provider_model=health.model, priority=route.priority,
        weight=route.weight, state=state, resting_until=until,
        last_failure=health.last_failure,
        last_failure_at=iso(health.last_failure_at) if health.last_failure_at else None,
    )
