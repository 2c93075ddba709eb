"""The fallback loop on its own: stub routes, stub health, no server."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from imagegate.config.errors import GatewayError
from imagegate.proxy.fallback import Unsuitable, try_routes


@dataclass(frozen=True)
class StubRoute:
    provider: str


@dataclass
class StubHealth:
    busy_probes: set[str] = field(default_factory=set)  # half-open, probe already out
    rest_after: int = 1  # failures that send a route to rest
    failures: dict[str, int] = field(default_factory=dict)
    ok: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def admit(self, route: StubRoute) -> bool:
        return route.provider not in self.busy_probes

    def failed(self, route: StubRoute, error: GatewayError | None = None) -> float | None:
        self.failures[route.provider] = self.failures.get(route.provider, 0) + 1
        return 30.0 if self.failures[route.provider] >= self.rest_after else None

    def succeeded(self, route: StubRoute) -> None:
        self.ok.append(route.provider)

    def release(self, routes: object) -> None:
        self.released = [r.provider for r in routes]  # type: ignore[attr-defined]


@dataclass
class Result:
    name: str
    broken: bool = False


A, B, C = StubRoute("a"), StubRoute("b"), StubRoute("c")


def scripted(**outcomes: object):  # type: ignore[no-untyped-def]
    """An attempt that answers, per provider, a Result or raises what it was given."""
    calls: list[str] = []

    async def attempt(route: StubRoute) -> Result:
        calls.append(route.provider)
        outcome = outcomes[route.provider]
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Result)
        return outcome

    return attempt, calls


async def test_a_provider_failure_moves_on_and_the_next_route_answers() -> None:
    attempt, calls = scripted(a=GatewayError("upstream_unavailable", "down"), b=Result("b"))
    health = StubHealth(rest_after=3)
    retries: list[str] = []
    served = await try_routes([A, B], attempt, health,
                              on_retry=lambda r: retries.append(r.provider))
    assert (served.result.name, served.route, served.attempts) == ("b", B, 2)
    assert calls == ["a", "b"] and health.failures == {"a": 1} and health.ok == ["b"]
    assert retries == ["b"]


async def test_the_clients_own_error_ends_the_request_at_once() -> None:
    attempt, calls = scripted(a=GatewayError("invalid_value", "bad size", param="size"),
                              b=Result("b"))
    health = StubHealth()
    with pytest.raises(GatewayError) as caught:
        await try_routes([A, B], attempt, health)
    assert caught.value.code == "invalid_value" and calls == ["a"] and health.failures == {}


async def test_the_gateways_own_cap_is_not_the_providers_failure() -> None:
    busy = GatewayError("upstream_busy", "cap", gateway_fault=True)
    attempt, calls = scripted(a=busy, b=Result("b"))
    health = StubHealth()
    with pytest.raises(GatewayError) as caught:
        await try_routes([A, B], attempt, health)
    assert caught.value is busy and health.failures == {}  # never counted, never sent elsewhere


async def test_unsuitable_routes_are_skipped_and_their_reason_kept() -> None:
    why = GatewayError("invalid_value", "no masks here", param="mask")
    attempt, calls = scripted(a=Unsuitable(why), b=Unsuitable(), c=Result("c"))
    served = await try_routes([A, B, C], attempt, StubHealth())
    assert served.route == C and served.attempts == 1  # skips are not attempts
    attempt, _ = scripted(a=Unsuitable(why), b=Unsuitable())
    with pytest.raises(GatewayError) as caught:
        await try_routes([A, B], attempt, StubHealth())
    assert caught.value is why


async def test_a_body_that_cannot_be_sent_again_is_not_retried() -> None:
    attempt, calls = scripted(a=GatewayError("upstream_timeout", "slow"), b=Result("b"))
    with pytest.raises(GatewayError) as caught:
        await try_routes([A, B], attempt, StubHealth(), replayable=lambda: False)
    assert caught.value.code == "upstream_timeout" and calls == ["a"]


async def test_a_broken_answer_counts_against_its_route_and_is_not_retried() -> None:
    attempt, calls = scripted(a=Result("a", broken=True), b=Result("b"))
    health = StubHealth()
    rests: list[tuple[str, float]] = []

    async def on_rest(route: StubRoute, seconds: float) -> None:
        rests.append((route.provider, seconds))

    served = await try_routes([A, B], attempt, health, on_rest=on_rest)
    assert served.route == A and served.result.broken and calls == ["a"]
    assert health.failures == {"a": 1} and health.ok == [] and rests == [("a", 30.0)]


async def test_a_half_open_route_whose_probe_is_out_is_passed_over() -> None:
    attempt, calls = scripted(a=Result("a"), b=Result("b"))
    health = StubHealth(busy_probes={"a"})
    served = await try_routes([A, B], attempt, health)
    assert served.route == B and calls == ["b"] and health.released == ["b"]


async def test_every_route_failing_answers_the_last_failure() -> None:
    attempt, _ = scripted(a=GatewayError("upstream_unavailable", "a down"),
                          b=GatewayError("upstream_timeout", "b slow"))
    health = StubHealth(rest_after=5)
    with pytest.raises(GatewayError) as caught:
        await try_routes([A, B], attempt, health)
    assert caught.value.code == "upstream_timeout" and health.released == ["a", "b"]
