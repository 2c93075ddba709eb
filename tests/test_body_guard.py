"""Bodies refused before they are read: declared too large (413 at once), encoded (415)."""
from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest

from tests.conftest import make_config, openai_models
from tests.rawhttp import Conn, request


@pytest.fixture
async def client(openai_upstream: Any, gateway: Any, tmp_path: Any) -> Any:
    recorder, base_url = openai_upstream
    providers, models = openai_models(base_url)
    c = await gateway(make_config({"server": {"max_request_bytes": 10_000}}, tmp_path=tmp_path,
                                  providers=providers, models=models))
    c.recorder = recorder
    return c


async def _conn(client: Any) -> Conn:
    return await Conn.open(client.server.host, client.server.port)


async def test_expect_continue_over_the_cap_is_413_at_once(client: Any) -> None:
    conn = await _conn(client)
    head = request("POST", "/v1/images/edits", {"Content-Type": "multipart/form-data; "
                   "boundary=x", "Content-Length": "20000000", "Expect": "100-continue"})
    reply = await conn.exchange(head)  # the body is never sent: the answer must not wait for it
    assert reply.status == 413 and reply.closes
    assert json.loads(reply.body)["error"]["code"] == "request_too_large"
    assert b"100 Continue" not in reply.raw_head
    assert reply.header("x-request-id")
    await conn.close()


async def test_expect_continue_within_the_cap_is_asked_for(client: Any) -> None:
    conn = await _conn(client)
    body = json.dumps({"model": "gpt-image-1", "prompt": "a cat"}).encode()
    head = request("POST", "/v1/images/generations", {"Content-Type": "application/json",
                   "Content-Length": str(len(body)), "Expect": "100-continue"})
    interim = await conn.exchange(head, head=True)
    assert interim.status == 100
    reply = await conn.exchange(body)
    assert reply.status == 200 and json.loads(reply.body)["data"]
    await conn.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_encoded_uploads_are_415_and_never_reach_the_provider(client: Any,
                                                                    encoding: str) -> None:
    raw = json.dumps({"model": "gpt-image-1", "prompt": "a cat"}).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    for _ in range(4):  # repeated: a client's own mistake never rests the route
        resp = await client.post("/v1/images/generations", data=body, headers={
            "Content-Type": "application/json", "Content-Encoding": encoding})
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_encoding"
    assert not client.recorder.requests
    ok = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p"})
    assert ok.status == 200
