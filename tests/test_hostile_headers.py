"""Outside bytes never break an answer: header values checked and bounded, bad headers, links."""
from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from imagegate.middlewares.errors import errors_middleware
from imagegate.middlewares.headers import enforce_safe_headers, header_list, retry_after
from structlog.testing import capture_logs

from tests.conftest import GATEWAY_KEY, make_config
from tests.rawhttp import Conn, request

AUTH = {"auth": {"keys": [{"id": "team-a", "key": GATEWAY_KEY}]}}


def test_header_list_is_bounded_and_printable() -> None:
    names = [f"field{i}" for i in range(20_000)] + ["\u001f", "a\r\nb", "\u007f", "prömpt"]
    value = header_list(names)
    assert len(value) <= 512 and value.endswith(" more")
    assert value.split(",")[-1].startswith("+")
    assert all(0x20 <= ord(c) < 0x7F for c in value)
    assert header_list(["a\r\nb", "prömpt", "x,y"]) == "a%0D%0Ab,pr%C3%B6mpt,x%2Cy"
    assert header_list(["seed", "style"]) == "seed,style"


@pytest.mark.parametrize(("given", "sent"), [
    ("5", "5"), ("0", "1"), ("1.2", "2"), ("1\x01", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None),
    ("-3", None), ("nan", None), ("9" * 40, None), ("999999999", "86400"), ("", None),
])
def test_retry_after_is_whole_seconds_or_nothing(given: str, sent: str | None) -> None:
    assert retry_after(given) == sent


async def _raw(client: Any) -> Conn:
    return await Conn.open(client.server.host, client.server.port)


async def test_undecodable_bearer_is_401_and_the_connection_serves_on(gateway: Any,
                                                                    tmp_path: Any) -> None:
    client = await gateway(make_config(AUTH, tmp_path=tmp_path))
    conn = await _raw(client)
    for token in ("\udcff", "\udcc3(", "k\udcffey"):
        reply = await conn.exchange(request("POST", "/v1/images/generations", {
            "Authorization": "Bearer " + token, "Content-Type": "application/json"}, b"{}"))
        assert reply.status == 401
        assert json.loads(reply.body)["error"]["code"] == "invalid_api_key"
    assert (await conn.exchange(request("GET", "/healthz", {}))).status == 200
    await conn.close()


@pytest.mark.parametrize("query", [
    "expires=%C2%B2&sig=x", "expires=%D9%A3&sig=abc", "expires=1&sig=%C3%A9",
    "expires=99999999999999999999&sig=x", "expires=&sig=", "sig=%00", "expires=1e9&sig=x",
])
async def test_bad_hosted_links_are_404(gateway: Any, tmp_path: Any, query: str) -> None:
    client = await gateway(make_config(tmp_path=tmp_path))
    resp = await client.get(f"/v1/images/files/{'A' * 24}.png?{query}")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def _bad_header(request: web.Request) -> web.StreamResponse:
    out = web.StreamResponse(headers={"x-imagegate-dropped-params": "a\r\nb,\x1f,\x7f"})
    await out.prepare(request)
    await out.write(b"streamed")
    return out


async def test_unsafe_header_values_are_encoded_not_an_empty_reply(aiohttp_client: Any) -> None:
    app = web.Application()
    app.router.add_get("/", _bad_header)
    app.on_response_prepare.append(enforce_safe_headers)
    client = await aiohttp_client(app)
    conn = await _raw(client)
    with capture_logs() as logs:
        reply = await conn.exchange(request("GET", "/", {}))
    assert reply.status == 200 and reply.body == b"streamed"
    assert reply.header("x-imagegate-dropped-params") == "a%0D%0Ab,%1F,%7F"
    assert [e["event"] for e in logs] == ["unsafe_header_encoded"]
    assert (await conn.exchange(request("GET", "/", {}))).status == 200
    await conn.close()


async def test_an_answer_whose_headers_failed_is_framed_and_closes(aiohttp_client: Any) -> None:
    app = web.Application(middlewares=[errors_middleware()])  # no safety net: the failure path
    app.router.add_get("/", _bad_header)
    client = await aiohttp_client(app)
    conn = await _raw(client)
    reply = await conn.exchange(request("GET", "/", {}))
    assert reply.status == 500 and reply.closes
    assert json.loads(reply.body)["error"]["type"] == "server_error"
    assert await conn.leftover() == b""  # nothing after the framed 500: no desync
    await conn.close()
