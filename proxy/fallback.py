"""The fallback loop: try a request's routes in order until one answers. No aiohttp here: routes,
attempts and health are passed in, so every rule is testable with stub routes and no server."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from imagegate.config.errors import GatewayError

# provider failures another route may not share; anything else is the request's own fault
RETRYABLE = frozenset({"upstream_unavailable", "upstream_timeout", "upstream_auth_failed",
                       "upstream_rate_limited", "upstream_busy"})
NOT_HEALTH = frozenset({"upstream_busy"})  # the gateway's own cap says nothing of the route


class Unsuitable(Exception):
    """This route cannot do what was asked (a mask, an edit, a size, a body already sent
    elsewhere): the next one may. `error` is what the client gets if no route can."""

    def __init__(self, error: GatewayError | None = None) -> None:
        super().__init__(error.message if error else "unsuitable route")
        self.error = error


class Result(Protocol):
    @property
    def broken(self) -> bool:
        """It failed after it had begun reaching the client: the route failed, the request
        is over (nothing can be retried)."""
        ...


class Route(Protocol):
    @property
    def provider(self) -> str: ...


R = TypeVar("R", bound=Route)
R_in = TypeVar("R_in", bound=Route, contravariant=True)
T = TypeVar("T", bound=Result)


class Health(Protocol[R_in]):
    def failed(self, route: R_in, /) -> bool: ...  # True when the route was just sent to rest

    def succeeded(self, route: R_in, /) -> None: ...


@dataclass(frozen=True)
class Served(Generic[R, T]):
    result: T
    route: R
    attempts: int  # routes actually called, this one included


async def try_routes(
    plan: Sequence[R], attempt: Callable[[R], Awaitable[T]], health: Health[R], *,
    replayable: Callable[[], bool] = lambda: True,
    on_rest: Callable[[R], Awaitable[None]] | None = None,
    on_retry: Callable[[R], None] | None = None,
) -> Served[R, T]:
    """The first route that answers. A retryable failure moves on while the request can still
    be sent again; the client then gets the last failure (or, when no route was suitable, the
    first route's reason)."""
    last: GatewayError | None = None
    refused: GatewayError | None = None
    failures = 0
    for route in plan:
        try:
            result = await attempt(route)
        except Unsuitable as skip:
            refused = refused or skip.error
            continue
        except GatewayError as error:
            if error.code not in RETRYABLE:
                raise
            if failures and on_retry is not None:
                on_retry(route)
            failures += 1
            if error.code not in NOT_HEALTH and health.failed(route) and on_rest is not None:
                await on_rest(route)
            last = error
            if not replayable():
                break
            continue
        if failures and on_retry is not None:
            on_retry(route)
        if result.broken:
            if health.failed(route) and on_rest is not None:
                await on_rest(route)
        else:
            health.succeeded(route)
        return Served(result, route, failures + 1)
    raise last or refused or GatewayError("upstream_unavailable", "No route of this model can "
                                          "serve this request.")
