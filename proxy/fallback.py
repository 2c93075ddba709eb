"""The fallback loop: try a request's routes in order until one answers. No aiohttp here: routes,
attempts and health are passed in, so every rule is testable with stub routes and no server.
Which failures are the provider's (and so move on) is routing's rule, `provider_failed`."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

import msgspec
from imagegate.config.errors import GatewayError
from imagegate.proxy.routing import provider_failed


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
    """What the loop tells route health (proxy/routing.py's Router)."""

    def admit(self, route: R_in, /) -> bool: ...  # False: half-open, its one probe already out

    def failed(self, route: R_in, error: GatewayError | None = None, /) -> float | None:
        ...  # the seconds of rest this failure has just started, if any

    def succeeded(self, route: R_in, /) -> None: ...

    def release(self, routes: Iterable[R_in], /) -> None: ...  # attempts that got no verdict


class Served(msgspec.Struct, Generic[R, T], frozen=True):
    result: T
    route: R
    attempts: int  # routes actually called, this one included


async def try_routes(
    plan: Sequence[R], attempt: Callable[[R], Awaitable[T]], health: Health[R], *,
    replayable: Callable[[], bool] = lambda: True,
    on_rest: Callable[[R, float], Awaitable[None]] | None = None,
    on_retry: Callable[[R], None] | None = None,
) -> Served[R, T]:
    """The first route that answers. A provider's failure moves on while the request can still
    be sent again; any other error (the client's, or the gateway's own) ends the request. The
    client then gets the last failure (or, when no route was suitable, the first route's
    reason)."""
    last: GatewayError | None = None
    refused: GatewayError | None = None
    failures = 0
    tried: list[R] = []

    async def failed(route: R, error: GatewayError | None) -> None:
        rested = health.failed(route, error)
        if rested and on_rest is not None:
            await on_rest(route, rested)

    try:
        for route in plan:
            if not health.admit(route):
                continue
            tried.append(route)
            try:
                result = await attempt(route)
            except Unsuitable as skip:
                refused = refused or skip.error
                continue
            except GatewayError as error:
                if not provider_failed(error):
                    raise
                if failures and on_retry is not None:
                    on_retry(route)
                failures += 1
                await failed(route, error)
                last = error
                if not replayable():
                    break
                continue
            if failures and on_retry is not None:
                on_retry(route)
            if result.broken:
                await failed(route, None)
            else:
                health.succeeded(route)
            return Served(result, route, failures + 1)
    finally:
        health.release(tried)  # a probe not settled (a hang-up, the gateway's own failure)
    raise last or refused or GatewayError("upstream_unavailable", "No route of this model can "
                                          "serve this request.")
