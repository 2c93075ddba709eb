"""The per-app state every handler shares: config, routes, upstream client, storage, metrics."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from imagegate.config.api import Usage
from imagegate.config.schema import Config
from imagegate.middlewares import redis_state
from imagegate.middlewares.metrics import Metrics
from imagegate.middlewares.parse import ModelTable
from imagegate.proxy.fetch import Fetcher
from imagegate.proxy.finish import Finisher
from imagegate.proxy.rests import SharedRests
from imagegate.proxy.routing import Router, RouteState
from imagegate.proxy.storage import ImageStore
from imagegate.proxy.upstream import Upstream


class ReadinessProbe:
    """The Redis client /readyz pings; one for the process, whatever config is loaded."""

    def __init__(self) -> None:
        self.client: Any = None


class Gateway:
    """One loaded config and what is built from it. A reload makes a successor that shares the
    long-lived parts (sessions, storage, Redis clients, unchanged route health); a request keeps
    the Gateway it started with until it ends."""

    router: Router
    upstream: Upstream
    store: ImageStore
    fetcher: Fetcher
    finisher: Finisher
    probe: ReadinessProbe
    shared: SharedRests | None

    def __init__(self, config: Config, metrics: Metrics, router: Router | None = None,
                 store: ImageStore | None = None, rest_sync_s: float = 1.0, *,
                 previous: Gateway | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.models = ModelTable(config)
        self.model_lists: dict[tuple[str, ...], bytes] = {}  # encoded /v1/models answers
        self.public_base_url = public_base_url(config)
        if previous is not None:  # a reload: see successor()
            self.router = previous.router.successor(config, previous.config)
            self.upstream = previous.upstream.successor(config)
            self.store, self.fetcher = previous.store, previous.fetcher
            self.finisher, self.probe = previous.finisher, previous.probe
            self.shared = previous.shared
            if self.shared is not None:
                self.shared.follow(self.router)
            return
        self.router = router or Router(config, metrics)
        self.upstream = Upstream(config, metrics)
        self.store = store or ImageStore(config.storage, state=config.state)
        self.fetcher = Fetcher(config.fetch)
        self.finisher = Finisher(self.store, self.fetcher)
        self.probe = ReadinessProbe()
        self.shared = None
        if config.state.backend == "redis":
            self.shared = SharedRests(config.state, self.router, rest_sync_s)

    def successor(self, config: Config) -> Gateway:
        """The Gateway of a reloaded config. It shares the long-lived parts: the upstream
        session and unchanged providers' slots, route health of unchanged pairs, storage, the
        fetcher and the Redis clients (state, storage and fetch need a restart to change)."""
        return Gateway(config, self.metrics, previous=self)

    async def share_rest(self, route: RouteState, seconds: float | None = None) -> None:
        """A route this gateway sent to rest rests on every gateway sharing the Redis."""
        if self.shared is not None:
            await self.shared.publish(route, seconds or self.config.routing.cooldown_s)

    def count_retry(self, route: RouteState) -> None:
        self.metrics.add(self.metrics.retries, route.provider)

    def base_url(self, request: web.Request) -> str:
        """Where hosted links point: the configured or served address, else the request's."""
        return self.public_base_url or f"{request.scheme}://{request.host}"

    def count_images(self, model: str, provider: str, count: int, usage: Usage | None) -> None:
        m = self.metrics
        m.add(m.images, model, provider, amount=count)
        if usage is not None:
            for kind, value in (("input", usage.input_tokens), ("output", usage.output_tokens)):
                if value:
                    m.add(m.tokens, model, provider, kind, amount=value)

    async def check_ready(self) -> tuple[bool, list[str]]:
        """(ready, the parts that are down). With `state.on_redis_error: open` a Redis outage
        leaves the gateway serving (shared state falls back to this process, b64 answers work):
        it stays ready, the part named as degraded; with `closed`, it is not ready."""
        uses = [part for part, backend in (("state", self.config.state.backend),
                                           ("storage", self.config.storage.backend))
                if backend == "redis"]
        if not uses:
            return True, []
        try:
            if self.probe.client is None:
                self.probe.client = redis_state.connect(self.config.state, connect_timeout_s=1,
                                                        timeout_s=1)
            await self.probe.client.ping()  # on a cluster: every primary answers
        except Exception:  # any failure means "unreachable"; the reason names no secret
            return self.config.state.on_redis_error == "open", [f"redis ({', '.join(uses)})"]
        return True, []

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: one client session for the app's life, the storage sweeper task."""
        await self.upstream.start()
        await self.fetcher.start()
        await self.store.start()
        tasks = [asyncio.create_task(self.store.sweep_forever())]
        if self.shared is not None:
            await redis_state.warm(self.shared.client)
            tasks.append(asyncio.create_task(self.shared.sync_forever()))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.shared is not None:
            await self.shared.close()
        await self.upstream.close()
        await self.fetcher.close()
        await self.store.close()
        if self.probe.client is not None:
            await self.probe.client.aclose()


GATEWAY = web.AppKey("gateway", Gateway)  # the first one; requests use gateway_of()
CURRENT = web.RequestKey("gateway", Gateway)  # the one a request started with


def gateway_of(request: web.Request) -> Gateway:
    found = request.get(CURRENT)
    return found if found is not None else request.app[GATEWAY]
WILDCARDS = ("", "0.0.0.0", "::")


def public_base_url(config: Config) -> str | None:
    """server.public_base_url, else http://<host>:<port> as served; None when that is no
    address a client can use (a wildcard host or port 0): links then follow the request's Host."""
    server = config.server
    if server.public_base_url:
        return server.public_base_url.rstrip("/")
    if server.host in WILDCARDS or not server.port:
        return None
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"http://{host}:{server.port}"
