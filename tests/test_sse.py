"""Adapted streams: keep-alives while a provider works, errors as events once streaming began."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from imagegate.adapters.base import ImageRequest
from imagegate.config.api import Image, ImagesResponse
from imagegate.config.errors import GatewayError
from imagegate.middlewares.errors import errors_middleware
from imagegate.proxy.sse import stream_images

REQ = ImageRequest(operation="generate", model="m", prompt="p")


def app_with(work: Any) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        streamed = await stream_images(request, work(), lambda done: (*done, {}),
                                       {"x-imagegate-dropped-params": "style"},
                                       "image_generation", REQ, keepalive_s=0.02)
        return streamed.response

    app = web.Application(middlewares=[errors_middleware()])
    app.router.add_get("/", handler)
    return app


async def test_slow_provider_gets_keepalives_then_the_image(aiohttp_client: Any) -> None:
    async def work() -> tuple[ImagesResponse, int]:
        await asyncio.sleep(0.15)
        return ImagesResponse(created=5, data=[Image(b64_json="aGk=")]), 0

    resp = await (await aiohttp_client(app_with(work))).get("/")
    text = await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["x-imagegate-dropped-params"] == "style"
    assert text.count(": keep-alive") >= 2
    assert text.endswith('"usage":{"input_tokens":0,"output_tokens":0,"total_tokens":0,'
                         '"input_tokens_details":{"text_tokens":0,"image_tokens":0}}}\n\n')
    assert "event: image_generation.completed" in text and '"created_at":5' in text


async def test_quick_errors_keep_their_status(aiohttp_client: Any) -> None:
    async def work() -> tuple[ImagesResponse, int]:
        raise GatewayError("upstream_rate_limited", "slow down")

    resp = await (await aiohttp_client(app_with(work))).get("/")
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "upstream_rate_limited"


async def test_late_errors_become_error_events(aiohttp_client: Any) -> None:
    async def work() -> tuple[ImagesResponse, int]:
        await asyncio.sleep(0.1)
        raise GatewayError("content_policy_violation", "blocked")

    resp = await (await aiohttp_client(app_with(work))).get("/")
    text = await resp.text()
    assert resp.status == 200 and "event: error" in text
    assert '"code":"content_policy_violation"' in text
