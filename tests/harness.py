"""The gateway served as in production (GatewayRunner: protocol, timeouts, cap) on loopback."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from imagegate.config.schema import Config
from imagegate.proxy.app import create_app
from imagegate.proxy.server import GatewayRunner, Limits
from prometheus_client import CollectorRegistry


class Clock:
    """A clock the test moves by hand (`clock.now += 60`), for whatever takes a `clock`."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatewayTestServer(TestServer):
    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_runner(self, **kwargs: Any) -> GatewayRunner:
        return GatewayRunner(self.app, self.limits, **kwargs)


async def start_gateway(config: Config, **limits: Any) -> GatewayTestServer:
    base = Limits.of(config.server)
    merged = Limits(**{**base.__dict__, **limits})
    server = GatewayTestServer(create_app(config, registry=CollectorRegistry()), merged)
    await server.start_server(access_log=None)  # as served: our own access lines only
    return server
