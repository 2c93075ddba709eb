"""The server under the app: protocol errors in OpenAI's shape, slow clients cut, a cap."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import GATEWAY_KEY, make_config
from tests.harness import GatewayTestServer, start_gateway
from tests.rawhttp import Conn, request

AUTH = {"auth": {"keys": [{"id": "team-a", "key": GATEWAY_KEY}]}}


@pytest.fixture
async def server(tmp_path: Any) -> AsyncIterator[GatewayTestServer]:
    srv = await start_gateway(make_config(AUTH, tmp_path=tmp_path), header_timeout_s=0.3,
                              body_timeout_s=0.3, max_connections=4)
    yield srv
    await srv.close()


async def conn(server: GatewayTestServer) -> Conn:
    assert server.port is not None
    return await Conn.open("127.0.0.1", server.port)


def openai_error(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("raw", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ig-test\x01key-team-a\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
])
async def test_protocol_errors_are_openai_shaped_and_name_no_header(server: GatewayTestServer,
                                                                     raw: bytes) -> None:
    c = await conn(server)
    with capture_logs() as logs:
        reply = await c.exchange(raw)
    assert reply.status == 400 and reply.closes
    assert reply.header("content-type") == "application/json"
    assert openai_error(reply.body)["type"] == "invalid_request_error"
    assert b"key-team-a" not in reply.body and b"vvvv" not in reply.body
    assert "key-team-a" not in repr(logs) and "vvvv" not in repr(logs)
    assert [e["event"] for e in logs] == ["protocol_error"]
    await c.close()


@pytest.mark.parametrize(("raw", "waiting"), [
    (b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n", "headers"),
    (b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Authorization: Bearer " + GATEWAY_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{",
     "body"),
])
async def test_slow_clients_get_408_and_are_cut(server: GatewayTestServer, raw: bytes,
                                                waiting: str) -> None:
    c = await conn(server)
    with capture_logs() as logs:
        reply = await c.exchange(raw, timeout=3)
    assert reply.status == 408 and reply.closes
    assert openai_error(reply.body)["message"] == f"The request's {waiting} did not arrive in time."
    assert await c.reader.read() == b""  # closed
    assert {"event": "client_timeout", "waiting_for": waiting, "log_level": "warning"} in logs
    await c.close()


async def test_a_slow_trickle_of_header_bytes_is_still_cut(server: GatewayTestServer) -> None:
    c = await conn(server)
    c.writer.write(b"GET /healthz HTTP/1.1\r\n")
    reading = asyncio.ensure_future(c.read_reply())  # read while writing: the server cuts us
    for _ in range(10):  # a byte every 0.1 s never finishes the head: the deadline holds
        await asyncio.sleep(0.1)
        if reading.done():
            break
        try:
            c.writer.write(b"X")
        except ConnectionError:
            break
    reply = await asyncio.wait_for(reading, 3)
    assert reply.status == 408
    await c.close()


async def test_idle_keepalive_and_a_working_handler_are_not_cut(server: GatewayTestServer) -> None:
    c = await conn(server)
    assert (await c.exchange(request("GET", "/healthz", {}))).status == 200
    await asyncio.sleep(0.5)  # idle between requests is keep-alive's business, not a timeout
    assert (await c.exchange(request("GET", "/healthz", {}))).status == 200
    await c.close()


async def test_connections_over_the_cap_get_503_and_the_others_serve_on(
        server: GatewayTestServer) -> None:
    held = [await conn(server) for _ in range(4)]
    over = await conn(server)
    reply = await asyncio.wait_for(over.read_reply(), 3)
    assert reply.status == 503 and reply.header("retry-after") == "1"
    assert openai_error(reply.body)["code"] == "upstream_unavailable"
    for c in held:
        assert (await c.exchange(request("GET", "/healthz", {}))).status == 200
    for c in [*held, over]:
        await c.close()
    await asyncio.sleep(0.05)
    again = await conn(server)  # closed connections free their places
    assert (await again.exchange(request("GET", "/healthz", {}))).status == 200
    await again.close()
