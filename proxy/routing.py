"""Route choice per request: priority tiers, weights within a tier, cooldown of failing routes."""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config, Route
from imagegate.middlewares.metrics import Metrics

FAILURES_BEFORE_REST = 3  # consecutive failures that send a route to rest for cooldown_s


class RouteState:
    def __init__(self, public_model: str, route: Route, index: int) -> None:
        self.route = route
        self.provider = route.provider
        self.model = route.model or public_model
        self.key = f"{public_model}/{index}"  # names the route in shared state
        self.failures = 0
        self.resting_until = 0.0


class Router:
    def __init__(self, config: Config, metrics: Metrics, *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.cooldown_s = config.routing.cooldown_s
        self.max_attempts = config.routing.max_attempts
        self.clock, self.rng, self.metrics = clock, rng or random.Random(), metrics
        self.routes = {
            name: [RouteState(name, r, i) for i, r in enumerate(model.routes)]
            for name, model in config.models.items()
        }
        for states in self.routes.values():
            for s in states:
                metrics.child(metrics.route_healthy, s.provider, s.model).set(1)

    def plan(self, public_model: str) -> list[RouteState]:
        """The routes to try, in order; 503 when every one of them is resting."""
        now = self.clock()
        states = self.routes[public_model]
        for s in states:
            if s.resting_until and s.resting_until <= now:  # rested: back on trial
                s.resting_until = 0.0
                self.metrics.child(self.metrics.route_healthy, s.provider, s.model).set(1)
        awake = [s for s in states if s.resting_until <= now]
        if not awake:
            wait = min(s.resting_until for s in states) - now
            raise GatewayError(
                "upstream_unavailable",
                f"Every route of the model '{public_model}' is resting after failures.",
                status=503, headers={"retry-after": str(max(1, math.ceil(wait)))},
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

    def succeeded(self, state: RouteState) -> None:
        if state.failures or state.resting_until:
            state.failures, state.resting_until = 0, 0.0
            self.metrics.child(self.metrics.route_healthy, state.provider, state.model).set(1)

    def failed(self, state: RouteState) -> bool:
        """Counts a failure; True when the route has just been sent to rest."""
        state.failures += 1
        if state.failures >= FAILURES_BEFORE_REST and self.cooldown_s > 0:
            self.rest(state, self.cooldown_s)
            state.failures = 0
            return True
        return False

    def rest(self, state: RouteState, seconds: float) -> None:
        until = self.clock() + seconds
        if until > state.resting_until:
            state.resting_until = until
            self.metrics.child(self.metrics.route_healthy, state.provider, state.model).set(0)

    def all_routes(self) -> list[RouteState]:
        return [s for states in self.routes.values() for s in states]
