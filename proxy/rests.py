"""Route rests shared through Redis, so every gateway machine skips a (provider, provider model)
pair one of them rested."""
from __future__ import annotations

import asyncio
from typing import Any

import structlog
from imagegate.config.schema import StateConfig
from imagegate.middlewares import redis_state
from imagegate.proxy.routing import Health, Router, RouteState

PREFIX = "imagegate:rest:"
log = structlog.get_logger("imagegate.shared")


class SharedRests:
    """Publishes a pair's rest as a key that expires with it; polls the others' rests."""

    def __init__(self, state: StateConfig, router: Router, sync_s: float = 1.0) -> None:
        self.client: Any = redis_state.connect(state, connect_timeout_s=1, timeout_s=1)
        self.errors = redis_state.errors()
        self.router, self.sync_s = router, sync_s
        self.health = router.all_health()

    def follow(self, router: Router) -> None:
        """After a reload: poll and rest the new router's pairs."""
        self.router, self.health = router, router.all_health()

    async def publish(self, state: RouteState | Health, seconds: float) -> None:
        try:
            await self.client.set(rest_key(state.key), "1", px=max(1, int(seconds * 1000)))
        except self.errors:
            log.warning("shared_state_unreachable", action="publish")  # local rest still holds

    async def sync_once(self) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)  # on a cluster: one per node, side
            for health in self.health:                        # by side
                pipe.pttl(rest_key(health.key))
            ttls = await pipe.execute()
        except self.errors:
            log.warning("shared_state_unreachable", action="sync")
            return
        for health, ttl in zip(self.health, ttls, strict=True):
            if ttl > 0:
                self.router.rest(health, ttl / 1000)

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            await self.sync_once()

    async def close(self) -> None:
        await self.client.aclose()


def rest_key(route_key: str) -> str:
    """A pair's rest; the tag hashes the whole pair (braces in a model name end no tag early)."""
    return f"{PREFIX}{{{route_key}}}"
