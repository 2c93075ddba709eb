"""SIGTERM drains: /readyz turns 503 at once, new image requests are refused (GETs such as hosted
links are still served), the ones in flight (streams included) finish until
server.graceful_shutdown_s; then the process exits 0."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from imagegate.config.errors import GatewayError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# what a load balancer and an operator still read while the gateway drains
DRAIN_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/status", "/status.json"})
log = structlog.get_logger("imagegate.drain")


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.draining = True

    async def wait(self, timeout_s: float) -> bool:
        """Until nothing is in flight (True) or the time is up (False)."""
        started = time.monotonic()
        log.info("draining", in_flight=self.in_flight, graceful_shutdown_s=timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain_timeout", in_flight=self.in_flight,
                        detail="requests still in flight are cancelled")
            return False
        log.info("drained", waited_s=round(time.monotonic() - started, 3))
        return True

    async def close_connections(self, request: web.Request,
                                response: web.StreamResponse) -> None:
        """on_response_prepare: while draining, the connections of refused and finished
        requests close after their answer (probes of /readyz and the like keep theirs)."""
        if self.draining and request.path not in DRAIN_OPEN_PATHS:
            response.force_close()
            response.headers["Connection"] = "close"  # the headers are already made up

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def drain_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in DRAIN_OPEN_PATHS:
                return await handler(request)
            if self.draining and request.method != "GET":  # new work; links and lists still go
                raise GatewayError(
                    "upstream_unavailable", "The gateway is shutting down; retry the request "
                    "(another instance takes it).", status=503,
                    headers={"retry-after": "1"})
            self.in_flight += 1
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()

        return drain_mw


DRAIN = web.AppKey("drain", Drain)
