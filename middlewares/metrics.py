"""Prometheus families from DESIGN.md on an injected registry, with cached label children."""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from imagegate.middlewares.keys import record_of
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.values import MutexValue

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
NONE = "-"
SCRAPE_PATH = "/metrics"  # not counted in flight: a scrape would always read itself
# the `_created` series double the output for no use
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool = False) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"imagegate_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                f"imagegate_{name}", doc, labels, registry=registry, buckets=REQUEST_BUCKETS
            )

        # several workers: in-flight sums the live ones, health is the worst any worker saw
        in_flight_mode: Any = "livesum" if multiprocess else "all"
        health_mode: Any = "min" if multiprocess else "all"
        self.registry = registry
        self.requests = counter("requests_total", "Requests answered",
                                ("endpoint", "model", "key", "status"))
        self.duration = histogram("request_duration_seconds", "Request duration",
                                  ("endpoint", "model"))
        self.upstream = counter("upstream_requests_total", "Upstream attempts",
                                ("provider", "model", "outcome"))
        self.upstream_duration = histogram("upstream_duration_seconds", "Upstream attempt "
                                           "duration", ("provider", "model"))
        self.images = counter("images_total", "Images returned", ("model", "provider"))
        self.key_images = counter("key_images_total", "Images returned, per API key", ("key",))
        self.tokens = counter("tokens_total", "Tokens reported by providers",
                              ("model", "provider", "kind"))
        self.in_flight = Gauge("imagegate_in_flight_requests", "Requests being answered",
                               registry=registry, multiprocess_mode=in_flight_mode)
        self.rate_limited = counter("rate_limited_total", "Requests refused by a key limit",
                                    ("key", "limit"))
        self.cost = counter("cost_usd", "USD of delivered answers on priced routes",
                            ("key", "model", "provider"))
        self.unpriced = counter("unpriced_requests", "Answers from routes without a price "
                                "(their cost is unknown)", ("model", "provider"))
        self.idempotent_replays = counter("idempotent_replays_total", "Stored answers "
                                          "replayed for an Idempotency-Key", ("key",))
        self.idempotent_coalesced = counter("idempotent_coalesced_total", "Duplicates that "
                                            "waited for the running request", ("key",))
        self.retries = counter("retries_total", "Attempts retried on another route",
                               ("provider",))
        self.upstream_in_flight = Gauge("imagegate_upstream_in_flight", "Upstream calls "
                                        "being made (max_concurrency caps them per process)",
                                        ("provider",), registry=registry,
                                        multiprocess_mode=in_flight_mode)
        # a key's budgets as of its last answer (workers share them through Redis: the latest)
        self.budget_limit = Gauge("imagegate_budget_limit", "A key's budget (USD or images) "
                                  "per its calendar window", ("key", "budget"), registry=registry,
                                  multiprocess_mode="max")
        self.budget_remaining = Gauge("imagegate_budget_remaining", "What is left of a key's "
                                      "budget as of its last answer", ("key", "budget"),
                                      registry=registry, multiprocess_mode="mostrecent")
        self.route_healthy = Gauge("imagegate_route_healthy", "1 when the route is not resting",
                                   ("provider", "model"), registry=registry,
                                   multiprocess_mode=health_mode)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, family: Any, *labels: str) -> Any:
        """Label children are cached: `labels()` costs more than the increment itself. Counters
        and histograms come back as their fast path (see _Count and _Observe)."""
        key = (family, *labels)  # families hash by identity
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = _fast(family, family.labels(*labels))
        return found

    def add(self, family: Any, *labels: str, amount: float = 1) -> None:
        """A counter child += amount in one call: `child(...).inc(amount)`, where in one
        process the value is written directly (a call per update is most of its cost)."""
        found = self._children.get((family, *labels))
        if found is None:
            found = self.child(family, *labels)
        if type(found) is _LoopValue:
            found._value += amount
        else:
            found.inc(amount)

    def observe(self, family: Any, *labels: str, amount: float) -> None:
        """A histogram child's observe in one call (the sum and the one bucket written
        directly in one process)."""
        found = self._children.get((family, *labels))
        if found is None:
            found = self.child(family, *labels)
        if type(found) is _Observe and found.direct:
            found.sum_value._value += amount
            found.values[bisect_left(found.bounds, amount)]._value += 1
        else:
            found.observe(amount)

    def forget(self, family: Any, *labels: str) -> None:
        """Drops a series whose labels no longer name anything configured."""
        if self._children.pop((family, *labels), None) is not None:
            family.remove(*labels)

    def observe_request(self, endpoint: str, model: str, key: str, status: int,
                        seconds: float) -> None:
        self.add(self.requests, endpoint, model, key, str(status))
        self.observe(self.duration, endpoint, model, amount=seconds)


class _LoopValue:
    """prometheus_client's MutexValue without its lock. Every increment and every scrape runs
    on the event loop's one thread, so the lock only cost a call per increment. Values of
    several workers (multiprocess files) are left as they are."""

    __slots__ = ("_value", "_exemplar")
    _multiprocess = False

    def __init__(self, value: float) -> None:
        self._value, self._exemplar = value, None

    def inc(self, amount: float = 1) -> None:  # also a counter child's fast path itself
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


def _unlocked(value: Any) -> Any:
    """The lock-free twin of a single-process value (same value), anything else as it is."""
    return _LoopValue(value.get()) if type(value) is MutexValue else value  # type: ignore[no-untyped-call]


class _Count:
    """A counter child's increment without the checks prometheus_client repeats on every call
    (is it a labelled parent? is the amount negative?): here the labels are fixed at creation
    and every amount counts something delivered. Writes the child's own value, so scrapes and
    multiprocess files see exactly what Counter.inc would have written. (A single-process
    child needs not even this: _fast hands out its lock-free value itself.)"""

    __slots__ = ("_add",)

    def __init__(self, child: Counter) -> None:
        self._add = child._value.inc

    def inc(self, amount: float = 1) -> None:
        self._add(amount)


class _Observe:
    """A histogram child's observe: the sum and the one bucket, the bucket found by bisection
    (prometheus_client walks the bounds in Python), the same values written."""

    __slots__ = ("bounds", "sum_value", "values", "direct")

    def __init__(self, child: Histogram) -> None:
        child._sum = self.sum_value = _unlocked(child._sum)
        child._buckets = [_unlocked(b) for b in child._buckets]
        self.values = tuple(child._buckets)
        self.direct = type(self.sum_value) is _LoopValue  # Metrics.observe writes them itself
        self.bounds = tuple(child._upper_bounds)  # ends with +Inf: every amount has a bucket

    def observe(self, amount: float) -> None:
        self.sum_value.inc(amount)
        self.values[bisect_left(self.bounds, amount)].inc(1)


def _fast(family: Any, child: Any) -> Any:
    """The fast path of a counter or histogram child; gauges (set, inc, dec) as they are. A
    prometheus_client without these internals gets its public methods."""
    try:
        if isinstance(family, Counter):
            value = child._value = _unlocked(child._value)
            return value if isinstance(value, _LoopValue) else _Count(child)
        if isinstance(family, Histogram):
            return _Observe(child)
    except AttributeError:
        pass
    return child


def gauge_adder(gauge: Gauge) -> Callable[[float], None]:
    """`add(1)` / `add(-1)` on an unlabelled gauge: Gauge.inc and dec without their checks."""
    value = getattr(gauge, "_value", None)
    if value is None:
        return gauge.inc
    gauge._value = value = _unlocked(value)
    add: Callable[[float], None] = value.inc
    return add


_ENDPOINTS: dict[Any, str] = {}  # route -> its canonical path (two properties fewer a request)


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route
    found = _ENDPOINTS.get(route)
    if found is None:
        resource = route.resource
        found = resource.canonical if resource is not None else "unmatched"
        if len(_ENDPOINTS) < 256:  # routes are few; a bound whatever aiohttp hands over
            _ENDPOINTS[route] = found
    return found


def metrics_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    add_in_flight = gauge_adder(metrics.in_flight)
    in_flight: Any = getattr(metrics.in_flight, "_value", None)  # written directly in one process
    if type(in_flight) is not _LoopValue:
        in_flight = None

    @web.middleware
    async def metrics_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 499
        counted = request.path != SCRAPE_PATH
        if counted:
            if in_flight is not None:
                in_flight._value += 1
            else:
                add_in_flight(1)
        try:
            response = await handler(request)
            status = response.status
            return response
        except ConnectionResetError:
            raise  # the client hung up: 499
        except Exception:
            status = 500
            raise
        finally:
            if counted:
                if in_flight is not None:
                    in_flight._value -= 1
                else:
                    add_in_flight(-1)
            record = record_of(request)
            key = record.key_id or NONE
            metrics.observe_request(
                _endpoint(request), record.model or NONE, key, status,
                time.perf_counter() - started,
            )
            outcome = record.outcome
            if outcome is not None and outcome.images:
                metrics.add(metrics.key_images, key, amount=outcome.images)

    return metrics_mw
