"""The HTTP server under the app: protocol errors in OpenAI's shape, slow clients cut, a cap."""
from __future__ import annotations

import asyncio
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from imagegate.config.errors import GatewayError
from imagegate.config.schema import ServerConfig
from imagegate.middlewares.errors import error_body
from imagegate.proxy.drain import DRAIN
from imagegate.proxy.reload import GENERATIONS

log = structlog.get_logger("imagegate.server")
FD_RESERVE = 64  # descriptors kept for the listener, logs, Redis and upstream connections

PROTOCOL_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_value", "The request could not be read as HTTP/1.1 (a malformed request "
          "line, header or body framing)."),
    413: ("request_too_large", "The request body is larger than the gateway accepts."),
    431: ("invalid_value", "The request's headers are too large."),
}


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, server: ServerConfig) -> Limits:
        cap = server.max_connections or default_max_connections()
        return cls(server.header_timeout_s, server.body_timeout_s, cap)


def default_max_connections() -> int:
    """A third of the open-file limit: each client connection may hold an upstream one too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, (soft - FD_RESERVE) // 3))


def raw_error(error: GatewayError, extra: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 error answer as bytes, for where no response object can be made."""
    body = error_body(error)
    head = [f"HTTP/1.1 {error.status} {_reason(error.status)}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _reason(status: int) -> str:
    return {408: "Request Timeout", 503: "Service Unavailable"}.get(status, "Error")


class GatewayProtocol(RequestHandler):
    """aiohttp's request handler, plus: its own 400s in OpenAI's shape and never naming a
    header value, a deadline for a request's head and for each pause in its body, a cap."""

    def __init__(self, manager: web.Server, limits: Limits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.limits = limits
        self._timer: asyncio.TimerHandle | None = None
        self._payload: Any = None  # the body stream of the newest request, while it is read
        self._seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager: Any = self._manager
        if manager is not None and len(manager.connections) > self.limits.max_connections:
            log.warning("connection_refused", reason="max_connections",
                        limit=self.limits.max_connections)
            self._refuse(GatewayError("upstream_unavailable", "The gateway is at its connection "
                                      "limit; retry shortly.", status=503),
                         {"Retry-After": "1"})

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count > self._seen:  # a request's head was read whole
            self._seen = self._request_count
            payload = self._messages[-1][1] if self._messages else None
            self._payload = payload if payload is not None and not payload.is_eof() else None
            self._arm(self.limits.body_timeout_s if self._payload is not None else None)
        elif self._payload is not None and not self._payload.is_eof():
            self._arm(self.limits.body_timeout_s)  # body bytes: the pause deadline restarts
        elif data:
            self._payload = None
            if self._timer is None:  # the first bytes of a new head: its deadline starts
                self._arm(self.limits.header_timeout_s)

    def _arm(self, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if seconds is not None and self.transport is not None:
            self._timer = self._loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        self._timer = None
        reading_body = self._payload is not None and not self._payload.is_eof()
        if self._payload is not None and not reading_body:
            return  # the body arrived whole: the handler is working, not the client
        if reading_body and self._reading_paused:  # the gateway is the slow side, not the client
            self._arm(self.limits.body_timeout_s)
            return
        what = "body" if reading_body else "headers"
        log.warning("client_timeout", waiting_for=what)
        self._refuse(GatewayError("invalid_value", f"The request's {what} did not arrive in "
                                  "time.", status=408))

    def _refuse(self, error: GatewayError, extra: dict[str, str] | None = None) -> None:
        request = self._current_request
        if self.transport is not None and (request is None or not request.writer.output_size):
            self.transport.write(raw_error(error, extra))
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to what it could not parse or run; its text (which can carry the
        client's header values) is neither logged nor sent."""
        if isinstance(exc, ConnectionError):
            log.debug("client_disconnected")
        elif status >= 500:
            log.error("protocol_handler_failed", status=status,
                      error=type(exc).__name__ if exc else None)
        else:
            log.warning("protocol_error", status=status,
                        error=type(exc).__name__ if exc else None)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already begun on this connection")
        code, text = PROTOCOL_ERRORS.get(status, ("server_error", "The gateway failed "
                                                  "unexpectedly."))
        if status == 504:
            code, text = "upstream_timeout", "The gateway timed out."
        error = GatewayError(code, text, status=status)
        response = web.Response(status=status, body=error_body(error),
                                content_type="application/json")
        response.force_close()
        return response


class GatewayServer(web.Server):
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, self.limits, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections use GatewayProtocol."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        app: Any = self.app
        loop = asyncio.get_running_loop()
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        kwargs = dict(self._kwargs)
        kwargs["debug"] = False
        return GatewayServer(app._handle, request_factory=app._make_request, loop=loop,
                             limits=self.limits, **kwargs)


DRAIN_CANCEL_S = 0.25  # after the drain: how long aiohttp lets what is left end, then cancels


def run(app: web.Application, server: ServerConfig, *, sock: socket.socket | None = None,
        reuse_port: bool = False, on_reload: Callable[[], None] | None = None) -> str:
    """web.run_app's job with GatewayRunner: serve (on `sock` when given, bound by the CLI or
    the supervisor; else on server.host/port) until SIGTERM/SIGINT, then drain (see
    proxy/drain.py); SIGHUP calls on_reload. Returns why it stopped."""
    signals: list[int] = []

    async def main() -> None:
        runner = GatewayRunner(app, Limits.of(server), handle_signals=False, access_log=None,
                               handler_cancellation=True, shutdown_timeout=DRAIN_CANCEL_S)
        await runner.setup()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def stopped(signum: int) -> None:
            signals.append(signum)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped, signum)
        if on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, on_reload)
        try:
            site: web.BaseSite = (
                web.SockSite(runner, sock) if sock is not None else
                web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port))
            await site.start()
            await stop.wait()
            await drain(app, stop)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return f"signal {signal.Signals(signals[0]).name}" if signals else "server stopped"


async def drain(app: web.Application, stop: asyncio.Event) -> None:
    """In-flight requests finish until graceful_shutdown_s; a second signal stops at once."""
    app[DRAIN].begin()
    stop.clear()
    grace = app[GENERATIONS].current.config.server.graceful_shutdown_s
    waiting = [asyncio.ensure_future(app[DRAIN].wait(grace)), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
