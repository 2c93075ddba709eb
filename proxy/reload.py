"""Config reload without downtime: each request runs on the generation (a loaded config and what
is built from it) that was current when it started; SIGHUP swaps in a new one for new requests."""
from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import structlog
from aiohttp import web
from imagegate.config.schema import Config
from imagegate.middlewares.redact import configured_secrets, register
from imagegate.proxy.gateway import CURRENT, Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[..., Awaitable[web.StreamResponse]]
BuildChain = Callable[[Config, Gateway], Sequence[Middleware]]
log = structlog.get_logger("imagegate.reload")
# what the listening socket, the HTTP server, the logger and the long-lived clients were built
# with: a reload names a change to these and keeps them as they are until a restart
RESTART_ONLY_SERVER = ("host", "port", "max_request_bytes", "header_timeout_s", "body_timeout_s",
                       "max_connections", "log_level")
RESTART_ONLY_SECTIONS = ("state", "storage", "fetch", "idempotency")


class Generation:
    def __init__(self, gateway: Gateway, middlewares: Sequence[Middleware]) -> None:
        self.gateway, self.config = gateway, gateway.config
        self.middlewares = tuple(middlewares)
        self._chains: dict[Handler, Handler] = {}

    def wrap(self, handler: Handler) -> Handler:
        """The handler inside this generation's middlewares (as aiohttp chains an app's), built
        once per handler: aiohttp hands the same one to every request of a route."""
        chain = self._chains.get(handler)
        if chain is None:
            wrapped: Any = handler
            for mw in reversed(self.middlewares):
                wrapped = functools.partial(mw, handler=wrapped)
            if len(self._chains) < 256:  # routes are few; a bound whatever aiohttp passes
                self._chains[handler] = wrapped
            chain = wrapped
        return chain


class Generations:
    """The current generation, and the reload that replaces it."""

    def __init__(self, gateway: Gateway, build_chain: BuildChain) -> None:
        self.build_chain = build_chain
        self.current = Generation(gateway, build_chain(gateway.config, gateway))
        self.reloads = 0

    def reload(self, config: Config) -> None:
        """Swaps in `config` for new requests; in-flight ones finish on theirs. The config is
        already valid (a ConfigError never gets here)."""
        old = self.current.config
        config, restart = keep_restart_only(old, config)
        if restart:
            log.warning("config_restart_needed", settings=restart,
                        detail="these settings keep their old values until a restart")
        register(configured_secrets(config))
        before = self.current.gateway
        gateway = before.successor(config)
        self.current = Generation(gateway, self.build_chain(config, gateway))
        self.reloads += 1
        old_health = {id(h) for h in before.router.health.values()}
        log.info("config_reloaded", pid=os.getpid(), **changes(old, config),
                 health_kept=sum(1 for h in gateway.router.health.values()
                                 if id(h) in old_health))

    def middleware(self) -> Middleware:
        @web.middleware
        async def generation_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
            generation = self.current  # captured once: a reload meanwhile changes nothing here
            request[CURRENT] = generation.gateway
            return await generation.wrap(handler)(request)

        return generation_mw


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with the restart-only settings of `old`, and the names of those that differed."""
    changed = [f"server.{name}" for name in RESTART_ONLY_SERVER
               if getattr(old.server, name) != getattr(new.server, name)]
    changed += [name for name in RESTART_ONLY_SECTIONS
                if getattr(old, name) != getattr(new, name)]
    if not changed:
        return new, []
    server = msgspec.structs.replace(
        new.server, **{name: getattr(old.server, name) for name in RESTART_ONLY_SERVER})
    kept = {name: getattr(old, name) for name in RESTART_ONLY_SECTIONS}
    return msgspec.structs.replace(new, server=server, **kept), changed


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, int]:
    return {"total": len(new), "added": len(new.keys() - old.keys()),
            "removed": len(old.keys() - new.keys()),
            "changed": sum(1 for k in old.keys() & new.keys() if old[k] != new[k])}


def changes(old: Config, new: Config) -> dict[str, Any]:
    """Counts of what a reload changed, by name; never a key or any other secret."""
    def routes(config: Config) -> dict[str, Any]:
        return {f"{name}[{i}]": r for name, m in config.models.items()
                for i, r in enumerate(m.routes)}

    def keys(config: Config) -> dict[str, Any]:
        return {k.id: k for k in config.auth.keys}  # compared, never logged

    return {"keys": _diff(keys(old), keys(new)), "models": _diff(old.models, new.models),
            "routes": _diff(routes(old), routes(new)),
            "providers": _diff(old.providers, new.providers),
            "admin_keys": len(new.server.admin_keys)}


GENERATIONS = web.AppKey("generations", Generations)
