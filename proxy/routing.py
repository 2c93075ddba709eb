"""Route choice per request: priority tiers, weights within a tier, and the health of each
(provider, provider model) pair: consecutive failures or a provider's `retry-after` rest it, then
one probe request (half-open) brings it back."""
from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Iterable

import msgspec
from imagegate.adapters.local import TestDouble
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config, Route
from imagegate.middlewares.metrics import Metrics

FAILURES_BEFORE_REST = 3  # consecutive failures that send a pair to rest for cooldown_s
MAX_RETRY_AFTER_S = 3600.0  # a provider's retry-after beyond this is read as this
# codes a provider's failure can answer; a request failing so may be tried on the next route.
# insufficient_quota is the provider account's billing state (Ark AccountOverdueError and
# QuotaExceeded, OpenRouter 402, Z.AI 1113, OpenAI's exceeded quota): the gateway's problem, so
# the next route is tried and the client gets 402 only when none is left.
RETRYABLE = frozenset({"upstream_unavailable", "upstream_timeout", "upstream_auth_failed",
                       "upstream_rate_limited", "insufficient_quota"})
RESTS_ON_RETRY_AFTER = frozenset({"upstream_rate_limited", "upstream_unavailable"})  # 429, 503


def provider_failed(error: GatewayError) -> bool:
    """The provider failed (its health suffers, the next route may be tried). Failures of the
    gateway's own (storage, its concurrency cap) and of the client never count."""
    return error.code in RETRYABLE and not error.gateway_fault


def retry_after_s(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """`retry-after` as seconds: delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


class Health:
    """The circuit of one (provider, provider model): closed, resting (open), or half-open
    (rested: one probe request may go, the others keep to other routes)."""

    def __init__(self, provider: str, model: str) -> None:
        self.provider, self.model = provider, model
        self.key = msgspec.json.encode([provider, model]).decode()  # names it in shared state
        self.failures = 0
        self.resting_until = 0.0
        self.half_open = False
        self.probe_until = 0.0  # a probe is out until then (its claim lapses if never settled)
        self.last_failure: str | None = None  # for /status: the error code of the last failure
        self.last_failure_at = 0.0  # wall clock


class RouteState:
    """One route of one public model; its health is shared with every route to the same pair."""

    def __init__(self, public_model: str, route: Route, health: Health) -> None:
        self.route = route
        self.public_model = public_model
        self.provider = route.provider
        self.model = route.model or public_model
        self.health = health
        self.key = health.key
        # a `local` route with latency_s or fail is a test double: its fault counter lives here
        self.double = TestDouble(route) if route.latency_s is not None or route.fail else None


class Router:
    def __init__(self, config: Config, metrics: Metrics, *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 keep: dict[tuple[str, str], Health] | None = None) -> None:
        self.cooldown_s = config.routing.cooldown_s
        self.max_attempts = config.routing.max_attempts
        self.clock, self.rng, self.metrics = clock, rng or random.Random(), metrics
        # a probe that has not settled within its provider's timeout (plus a margin) lapses
        self.probe_s = {name: p.timeout_s + 30.0 for name, p in config.providers.items()}
        self.health: dict[tuple[str, str], Health] = {}
        self.routes: dict[str, list[RouteState]] = {}
        for name, model in config.models.items():
            states = []
            for r in model.routes:
                pair = (r.provider, r.model or name)
                health = self.health.get(pair)
                if health is None and keep and pair in keep:  # a reload kept its rest
                    health = self.health[pair] = keep[pair]
                elif health is None:
                    health = self.health[pair] = Health(*pair)
                    self._gauge(health, 1)
                states.append(RouteState(name, r, health))
            self.routes[name] = states

    def successor(self, config: Config, old: Config) -> Router:
        """The router of a reloaded config: pairs whose provider did not change keep their
        health (a rest, a probe, the failure count); pairs no longer routed lose their series."""
        keep = {pair: h for pair, h in self.health.items()
                if old.providers.get(pair[0]) == config.providers.get(pair[0])}
        new = Router(config, self.metrics, clock=self.clock, rng=self.rng, keep=keep)
        for pair in self.health.keys() - new.health.keys():
            self.metrics.forget(self.metrics.route_healthy, *pair)
        return new

    def _gauge(self, health: Health, value: int) -> None:
        self.metrics.child(self.metrics.route_healthy, health.provider, health.model).set(value)

    def _wake(self, health: Health, now: float) -> None:
        if health.resting_until and health.resting_until <= now:  # rested: on trial
            health.resting_until, health.half_open, health.probe_until = 0.0, True, 0.0

    def plan(self, public_model: str) -> list[RouteState]:
        """The routes to try, in order; 503 when every one of them is resting (or probing)."""
        now = self.clock()
        states = self.routes[public_model]
        for s in states:
            self._wake(s.health, now)
        awake = [s for s in states if not s.health.resting_until
                 and not (s.health.half_open and s.health.probe_until > now)]
        if not awake:
            waits = [(s.health.resting_until or now + 1) - now for s in states]
            raise GatewayError(
                "upstream_unavailable",
                f"Every route of the model '{public_model}' is resting after failures.",
                status=503, headers={"retry-after": str(max(1, math.ceil(min(waits))))},
            )
        if len(awake) == 1:
            return awake
        ordered: list[RouteState] = []
        for priority in sorted({s.route.priority for s in awake}):
            tier = [s for s in awake if s.route.priority == priority]
            while tier:  # weighted shuffle: pick by weight without replacement
                pick = self.rng.choices(tier, weights=[s.route.weight for s in tier])[0]
                ordered.append(pick)
                tier.remove(pick)
        return ordered[: self.max_attempts]

    def admit(self, state: RouteState) -> bool:
        """Just before an attempt: False when the pair is half-open and its one probe is
        already out (or it went back to rest meanwhile); the caller skips the route."""
        health, now = state.health, self.clock()
        self._wake(health, now)
        if health.resting_until:
            return False
        if not health.half_open:
            return True
        if health.probe_until > now:
            return False
        health.probe_until = now + self.probe_s.get(health.provider, 330.0)
        return True

    def release(self, states: Iterable[RouteState]) -> None:
        """The attempts of a request ended without a verdict (a hang-up, the gateway's own
        failure): a probe they held is free for the next request."""
        for s in states:
            if s.health.half_open:
                s.health.probe_until = 0.0

    def succeeded(self, state: RouteState) -> None:
        health = state.health
        if health.failures or health.resting_until or health.half_open:
            health.failures, health.resting_until = 0, 0.0
            health.half_open, health.probe_until = False, 0.0
            self._gauge(health, 1)

    def failed(self, state: RouteState, error: GatewayError | None = None) -> float | None:
        """Counts a provider failure; the seconds of rest it has just started, if any: the
        cooldown after FAILURES_BEFORE_REST in a row (or one failed probe), and at least the
        provider's own `retry-after` on a 429 or 503."""
        health = state.health
        health.failures += 1
        health.last_failure = error.code if error is not None else "failed"
        health.last_failure_at = time.time()
        seconds = 0.0
        if self.cooldown_s > 0 and (health.failures >= FAILURES_BEFORE_REST or health.half_open):
            seconds = self.cooldown_s
        if error is not None and error.code in RESTS_ON_RETRY_AFTER:
            seconds = max(seconds, retry_after_s(error.headers.get("retry-after")) or 0.0)
        if not seconds:
            health.probe_until = 0.0  # no rest to go back to: the next request probes again
            return None
        self.rest(state, seconds)
        health.failures = 0
        return seconds

    def rest(self, state: RouteState | Health, seconds: float) -> None:
        health = state.health if isinstance(state, RouteState) else state
        until = self.clock() + seconds
        if until > health.resting_until:
            health.resting_until, health.half_open, health.probe_until = until, False, 0.0
            self._gauge(health, 0)

    def all_routes(self) -> list[RouteState]:
        return [s for states in self.routes.values() for s in states]

    def all_health(self) -> list[Health]:
        return list(self.health.values())
