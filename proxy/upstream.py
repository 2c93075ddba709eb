"""The one shared upstream client: per-provider timeouts, concurrency caps, attempt logs."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import structlog
from imagegate.adapters import ADAPTERS
from imagegate.adapters.base import Adapter
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config, Provider
from imagegate.middlewares.metrics import Metrics

log = structlog.get_logger("imagegate.upstream")


@contextmanager
def map_upstream_errors(provider: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise GatewayError("upstream_timeout", f"The provider '{provider}' timed out.") from exc
    except aiohttp.ClientError as exc:
        raise GatewayError(
            "upstream_unavailable", f"The provider '{provider}' could not be reached."
        ) from exc


class AnswerBroken(Exception):
    """The upstream failed after its answer had begun reaching the client: the route failed,
    but the request is over (nothing can be retried or re-rendered)."""

    def __init__(self, response: Any) -> None:
        super().__init__("the upstream broke mid-answer")
        self.response = response


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


class ProviderState:
    def __init__(self, name: str, config: Provider) -> None:
        self.name, self.config = name, config
        self.adapter: Adapter = ADAPTERS[config.type]
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

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        # answers are relayed or decoded as they come: ask for them uncompressed
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            headers={"Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    @asynccontextmanager
    async def attempt(
        self, provider: str, model: str, path: str, *, data: Any, headers: Mapping[str, str],
        method: str = "POST", stream: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One upstream call; the caller reads the response inside the block."""
        state = self.providers[provider]
        if state.in_flight >= state.config.max_concurrency:
            self.metrics.child(self.metrics.upstream, provider, model, "busy").inc()
            raise GatewayError(
                "upstream_busy", f"The provider '{provider}' is at its concurrency limit.",
                headers={"retry-after": "1"}, gateway_fault=True,
            )
        assert self.session is not None
        state.in_flight += 1
        started, outcome, status = time.perf_counter(), "connection_error", 0
        try:
            with map_upstream_errors(provider):
                async with self.session.request(
                    method, state.base_url + path, data=data,
                    headers={**state.headers, **headers},
                    timeout=state.stream_timeout if stream else state.timeout,
                    allow_redirects=False,  # a provider that redirects is misconfigured
                ) as resp:
                    status, outcome = resp.status, outcome_of(resp.status)
                    if 300 <= status < 400:
                        raise GatewayError("upstream_unavailable", f"The provider '{provider}' "
                                           f"answered with a redirect (HTTP {status}).")
                    yield resp
        except GatewayError as exc:
            if exc.code == "upstream_timeout":
                outcome = "timeout"
            raise
        except AnswerBroken:
            outcome = "broken"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            state.in_flight -= 1
            self.record(provider, model, path, status, outcome, time.perf_counter() - started)

    def record(self, provider: str, model: str, path: str, status: int, outcome: str,
               seconds: float) -> None:
        """The metrics and the log line of one attempt (an HTTP call or an offline render)."""
        m = self.metrics
        m.child(m.upstream, provider, model, outcome).inc()
        m.child(m.upstream_duration, provider, model).observe(seconds)
        log.info("upstream", provider=provider, model=model, path=path, status=status,
                 outcome=outcome, duration_ms=round(seconds * 1000, 2))
