"""The gateway served as in production (GatewayRunner: protocol, timeouts, cap) on loopback."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from imagegate.config.schema import Config
from imagegate.proxy.app import create_app
from imagegate.proxy.server import GatewayRunner, Limits
from prometheus_client import CollectorRegistry


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
