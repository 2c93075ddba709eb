"""The one shared upstream client: per-provider timeouts, concurrency caps, attempt logs."""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
from imagegate.adapters import ADAPTERS
from imagegate.adapters.base import Adapter, safe_message
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config, Provider
from imagegate.middlewares.context import milliseconds
from imagegate.middlewares.keys import REQUEST_ID_VAR
from imagegate.middlewares.metrics import Metrics
from imagegate.proxy.logs import info_line

from imagegate import __version__

# The gateway's request id goes upstream under the header the provider documents (OpenAI:
# X-Client-Request-Id), else as a plain x-request-id; the provider's own id for the attempt log
# line is read from these answer headers, first found wins.
SENT_ID_HEADER = {"openai": "X-Client-Request-Id"}
ANSWER_ID_HEADERS = ("x-request-id", "request-id")
USER_AGENT = f"imagegate/{__version__}"


_SECRETS = re.compile(r"\b(?:sk|ig|key)-[^\s'\"]+|Bearer\s+\S+", re.IGNORECASE)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """A provider's message fit for the log: no base64 or data URLs (safe_message), no key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return safe_message(_SECRETS.sub("[redacted]", text))


def request_id() -> str | None:
    """The id of the request being answered (bound by the context middleware)."""
    return REQUEST_ID_VAR.get()


class Call:
    """One upstream call in progress: its response, and how it ended when that is not its
    status (the answer broke after it had begun reaching the client)."""

    def __init__(self, response: aiohttp.ClientResponse, slot: Slot | None = None) -> None:
        self.response = response
        self.broken = False
        self.slot = slot if slot is not None else Slot()  # the attempt's record (its log line)


def outcome_of(status: int) -> str:
    if 300 <= status < 400:
        return "redirected"
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "auth_failed"
    if status == 429:
        return "rate_limited"
    return "client_error" if status < 500 else "server_error"


class Slot(msgspec.Struct):
    """How one attempt ended, for its log line and metrics."""

    status: int = 0
    outcome: str = "connection_error"
    upstream_id: str | None = None  # the provider's own request id, when it sent one
    failure: GatewayError | None = None


class ProviderState:
    def __init__(self, name: str, config: Provider) -> None:
        self.name, self.config = name, config
        self.adapter: Adapter = ADAPTERS[config.type]
        self.id_header = SENT_ID_HEADER.get(config.type, "x-request-id")  # once, not per call
        self.base_url = getattr(config, "base_url", "").rstrip("/")
        headers = dict(config.headers)
        api_key = getattr(config, "api_key", None)
        if api_key:
            headers.update(self.adapter.auth_headers(api_key))
        self.headers = headers
        self.timeout = aiohttp.ClientTimeout(
            total=config.timeout_s, sock_connect=config.connect_timeout_s
        )
        self.stream_timeout = aiohttp.ClientTimeout(
            sock_read=config.timeout_s, sock_connect=config.connect_timeout_s
        )
        self.in_flight = 0


class Upstream:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.providers = {n: ProviderState(n, p) for n, p in config.providers.items()}
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None

    def successor(self, config: Config) -> Upstream:
        """The client of a reloaded config: the same session; an unchanged provider keeps its
        state, so calls still in flight on the old config count against its max_concurrency."""
        new = Upstream(config, self.metrics)
        for name, state in self.providers.items():
            if name in new.providers and state.config == config.providers[name]:
                new.providers[name] = state
        new.session = self.session
        return new

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        # answers are relayed or decoded as they come: ask for them uncompressed. The gateway
        # names itself (not aiohttp's Python version); a User-Agent given here instead of
        # skip_auto_headers, which aiohttp turns into a sorted header set on every request
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            headers={"Accept-Encoding": "identity", "User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def attempt(
        self, provider: str, model: str, path: str, *, data: Any, headers: Mapping[str, str],
        method: str = "POST", stream: bool = False,
    ) -> Attempt:
        """One upstream call (`async with ... as call`); the caller reads the response inside
        the block. A timeout or a connection failure, also while the answer is read, comes out
        as the gateway's error for that provider."""
        assert self.session is not None
        state = self.providers[provider]
        ours = request_id()
        sent = {state.id_header: ours} if ours else {}
        return Attempt(Place(self, state, model, path), self.session.request(
            method, state.base_url + path, data=data, headers={**sent, **state.headers, **headers},
            timeout=state.stream_timeout if stream else state.timeout,
            allow_redirects=False,  # a provider that redirects is misconfigured
        ))

    def slot(self, state: ProviderState, model: str, path: str) -> Place:
        """A place under the provider's max_concurrency for one attempt (an HTTP call or an
        offline render), logged and counted when it ends; 429 upstream_busy when none is free."""
        return Place(self, state, model, path)

    def record(self, provider: str, model: str, path: str, status: int, outcome: str,
               seconds: float, *, upstream_id: str | None = None,
               error: GatewayError | None = None) -> None:
        """The metrics and the log line of one attempt (an HTTP call or an offline render):
        the provider's own request id (what its support desk asks for) and, when it failed,
        the error code and the provider's message made safe (no secrets, no base64)."""
        m = self.metrics
        m.add(m.upstream, provider, model, outcome)
        m.observe(m.upstream_duration, provider, model, amount=seconds)
        extra: dict[str, Any] = {}
        if upstream_id:
            extra["upstream_request_id"] = safe_message(upstream_id, 128)
        if error is not None:
            state = self.providers.get(provider)
            key = getattr(state.config, "api_key", "") if state is not None else ""
            extra["error_code"] = error.code
            extra["error"] = scrub(error.provider_message or error.message, (key,))
        info_line("upstream", {"provider": provider, "model": model, "path": path,
                               "status": status, "outcome": outcome,
                               "duration_ms": milliseconds(seconds), **extra})


class Place:
    """One attempt's place under its provider's max_concurrency (`async with`, or taken and
    left by an Attempt): refused when none is free, and logged and counted as it ended."""

    __slots__ = ("upstream", "state", "model", "path", "slot", "started")

    def __init__(self, upstream: Upstream, state: ProviderState, model: str, path: str) -> None:
        self.upstream, self.state, self.model, self.path = upstream, state, model, path
        self.slot = Slot()
        self.started = 0.0

    def take(self) -> Slot:
        state = self.state
        if state.in_flight >= state.config.max_concurrency:
            metrics = self.upstream.metrics
            metrics.add(metrics.upstream, state.name, self.model, "busy")
            raise GatewayError(
                "upstream_busy", f"The provider '{state.name}' is at its concurrency limit.",
                headers={"retry-after": "1"}, gateway_fault=True,
            )
        state.in_flight += 1
        self.started = time.perf_counter()
        return self.slot

    def leave(self, exc: BaseException | None) -> None:
        slot = self.slot
        if isinstance(exc, GatewayError):
            slot.failure = exc
            if exc.code == "upstream_timeout":
                slot.outcome = "timeout"
            elif slot.outcome == "ok" and not exc.gateway_fault:
                slot.outcome = "bad_answer"  # a 2xx that carried no usable image
        elif isinstance(exc, asyncio.CancelledError):
            slot.outcome = "cancelled"
        self.state.in_flight -= 1
        self.upstream.record(self.state.name, self.model, self.path, slot.status, slot.outcome,
                             time.perf_counter() - self.started, upstream_id=slot.upstream_id,
                             error=slot.failure)

    async def __aenter__(self) -> Slot:
        return self.take()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: Any) -> None:
        self.leave(exc)


class Attempt:
    """An upstream call in a place: entered, the response's head has arrived (a redirect is
    refused); left, the connection is released, a failure mapped, the place left."""

    __slots__ = ("place", "request", "call")

    def __init__(self, place: Place, request: Any) -> None:
        self.place, self.request = place, request  # request: aiohttp's, not yet awaited
        self.call: Call | None = None

    async def __aenter__(self) -> Call:
        try:
            slot = self.place.take()
        except GatewayError:
            self.request.close()  # never sent
            raise
        try:
            resp = await self.request
        except BaseException as exc:
            self._leave(exc)
            raise
        status = resp.status
        slot.status, slot.outcome = status, outcome_of(status)
        found = resp.headers.get  # the first of ANSWER_ID_HEADERS sent (an empty one is none)
        slot.upstream_id = found(ANSWER_ID_HEADERS[0]) or found(ANSWER_ID_HEADERS[1])
        self.call = Call(resp, slot)
        if 300 <= status < 400:
            provider = self.place.state.name
            error = GatewayError("upstream_unavailable", f"The provider '{provider}' answered "
                                 f"with a redirect (HTTP {status}).")
            await self.__aexit__(GatewayError, error, None)
            raise error
        return self.call

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: Any) -> None:
        call = self.call
        assert call is not None
        if exc is None and call.broken:
            call.slot.outcome = "broken"
        try:
            await call.response.__aexit__(kind, exc, tb)
        except BaseException as failed:  # releasing failed: that failure is the one seen
            self._leave(failed)
            raise
        self._leave(exc)

    def _leave(self, exc: BaseException | None) -> None:
        """Leaves the place with how the call ended. A timeout or a connection failure is
        raised as the gateway's error for the provider (from the original); with anything
        else the caller's own exception goes on."""
        name = self.place.state.name
        if isinstance(exc, TimeoutError):
            error = GatewayError("upstream_timeout", f"The provider '{name}' timed out.")
        elif isinstance(exc, aiohttp.ClientError):
            error = GatewayError("upstream_unavailable",
                                 f"The provider '{name}' could not be reached.")
        else:
            self.place.leave(exc)
            return
        self.place.leave(error)
        raise error from exc

