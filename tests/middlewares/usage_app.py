"""An inline app around the usage middleware: a stand-in parse step and a scripted handler
(its prompt says what to do), so limits, budgets and cost are tested on their own."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.api import ImageGenerateRequest, Usage
from imagegate.config.errors import GatewayError
from imagegate.config.loader import parse_config
from imagegate.config.schema import Config
from imagegate.middlewares.context import context_middleware
from imagegate.middlewares.errors import errors_middleware
from imagegate.middlewares.keys import PARSED, Outcome, ParsedRequest, record_of
from imagegate.middlewares.limits import Limiter
from imagegate.middlewares.metrics import Metrics
from imagegate.middlewares.ratelimit import apply_usage_headers, ratelimit_middleware
from prometheus_client import CollectorRegistry

from tests.harness import Clock

USAGE = Usage(input_tokens=50, output_tokens=4160, total_tokens=4210,
              input_tokens_details={"text_tokens": 10, "image_tokens": 40})
ANSWER = {"created": 1, "data": [{"b64_json": "aW1n"}]}


DAY_START = 1_796_083_200.0  # 2026-12-01T00:00:00Z: a UTC day and month begin


def usage_config(auth: dict[str, Any], price: dict[str, Any] | None = None,
                 state: dict[str, Any] | None = None) -> Config:
    route: dict[str, Any] = {"provider": "local"}
    if price is not None:
        route["price"] = price
    return parse_config({
        "auth": auth, "state": state or {},
        "providers": {"local": {"type": "local"}},
        "models": {"img": {"routes": [route]}, "other": {"routes": [{"provider": "local"}]}},
    }, env={})


def _parse(config: Config) -> Any:
    @web.middleware
    async def parse_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if config.auth.keys:
            record_of(request).key_id = token
        body = msgspec.json.decode(await request.read(), type=ImageGenerateRequest)
        model = body.model or "img"
        request[PARSED] = ParsedRequest("generations", model, config.models[model], body.n or 1,
                                        bool(body.stream), body, None, None, {})
        return await handler(request)

    return parse_mw


class Script:
    """The handler; `release` lets held requests finish, `entered` counts arrivals."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.finished = 0

    async def handler(self, request: web.Request) -> web.StreamResponse:
        parsed = request[PARSED]
        body, prompt = parsed.body, parsed.body.prompt
        self.entered += 1
        route = parsed.model_config.routes[0]
        delivered = parsed.n - 1 if "partial" in prompt else parsed.n
        outcome = Outcome("local", route, "local", delivered, USAGE, body.size, body.quality, 1)
        if "fail" in prompt:
            raise GatewayError("upstream_unavailable", "The provider failed.")
        if "hang" in prompt:
            await self.release.wait()
        if "stream" in prompt:
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"event: image_generation.partial_image\ndata: {}\n\n")
            record_of(request).outcome = outcome
            await self.release.wait()
            await response.write(b"event: image_generation.completed\ndata: {}\n\n")
            self.finished += 1
            return response
        record_of(request).outcome = outcome
        self.finished += 1
        return web.json_response({**ANSWER, "data": ANSWER["data"] * delivered})


def usage_app(config: Config, clock: Clock | None = None, *, lease_ttl_s: float = 60.0
              ) -> tuple[web.Application, Script, Metrics, Limiter]:
    metrics = Metrics(CollectorRegistry())
    limiter = Limiter(config.state, clock or Clock(time.time()), lease_ttl_s=lease_ttl_s)
    script = Script()
    app = web.Application(middlewares=[context_middleware(), errors_middleware(), _parse(config),
                                       ratelimit_middleware(config.auth, limiter, metrics)])
    app.on_response_prepare.append(apply_usage_headers)
    app.cleanup_ctx.append(limiter.lifecycle)
    app.router.add_post("/v1/images/generations", script.handler)
    return app, script, metrics, limiter
