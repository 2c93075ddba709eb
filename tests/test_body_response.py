"""Answers with a large body: the head may go out on its own write (proxy/answer.py); the client
sees the same well-framed answer, and the connection stays usable."""
from __future__ import annotations

import os
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from imagegate.proxy.answer import HEAD_APART_BYTES, BodyResponse


@pytest.mark.parametrize("size", [0, 100, HEAD_APART_BYTES - 1, HEAD_APART_BYTES,
                                  3 * 1024 * 1024])
async def test_a_body_of_any_size_arrives_whole_on_a_kept_alive_connection(
        aiohttp_client: Any, size: int) -> None:
    body = os.urandom(size)

    async def answer(request: web.Request) -> web.StreamResponse:
        return BodyResponse(body=body, content_type="application/json",
                            headers={"x-answer": "1"})

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/a", answer)
    app.router.add_route("*", "/plain", plain)
    client = await aiohttp_client(app, connector=aiohttp.TCPConnector(limit=1))
    for _ in range(3):  # one connection: each answer must end exactly at its length
        resp = await client.post("/a")
        assert resp.status == 200 and resp.headers["x-answer"] == "1"
        assert resp.headers["Content-Type"] == "application/json"
        assert int(resp.headers["Content-Length"]) == size
        assert await resp.read() == body
    head, plain_head = await client.head("/a"), await client.head("/plain")
    assert head.status == 200 and await head.read() == b""
    assert head.headers.get("Content-Length") == plain_head.headers.get("Content-Length")
