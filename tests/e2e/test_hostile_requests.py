"""Hostile requests inside the request path: each class answered as a 400, never a 500."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.upstreams import ark as ark_mock
from tests.upstreams.openai import PNG


@pytest.fixture
async def client(aiohttp_server: Any, gateway: Any, tmp_path: Any) -> Any:
    ark = await aiohttp_server(ark_mock.make_app(ark_mock.Recorder()))
    providers = {"ark": {"type": "ark", "base_url": str(ark.make_url("")).rstrip("/"),
                         "api_key": ark_mock.API_KEY}}
    models = {"seedream": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0-250828"}]}}
    return await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))


async def post(client: Any, path: str, raw: bytes) -> tuple[int, dict, Any]:
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    return resp.status, await resp.json(), resp


@pytest.mark.parametrize("raw", [
    b'{"prompt": "p", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"prompt": "p", "x": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
])
async def test_deep_nesting_is_400(client: Any, raw: bytes) -> None:
    status, body, _ = await post(client, "/v1/images/generations", raw)
    assert status == 400 and "nested more than 32 levels" in body["error"]["message"]


@pytest.mark.parametrize("raw", [
    b'{"model": "seedream", "model": "other", "prompt": "p"}',
    b'{"model": "seedream", "prompt": "p", "\\u006dodel": "other"}',
    b'{"n": 1, "prompt": "p", "model": "seedream", "n": 10}',
])
async def test_a_repeated_top_level_key_is_400(client: Any, raw: bytes) -> None:
    status, body, _ = await post(client, "/v1/images/generations", raw)
    assert status == 400 and "more than once" in body["error"]["message"]


@pytest.mark.parametrize("edit", [
    {"images": [{"file_id": "file-abc"}]},  # only OpenAI reads file ids
    {"images": [{"image_url": "data:text/plain;base64,aGk="}]},
    {"images": [{"image_url": "http://10.0.0.1/a.png"}]},  # a private address
])
async def test_stream_true_gets_the_same_answer_as_without(client: Any, edit: dict) -> None:
    body = {"model": "seedream", "prompt": "p", **edit}
    plain = await post(client, "/v1/images/edits", json.dumps(body).encode())
    streamed = await post(client, "/v1/images/edits", json.dumps({**body, "stream": True})
                          .encode())
    assert plain[0] == streamed[0] == 400
    assert plain[1] == streamed[1]


async def test_unknown_field_names_are_encoded_and_bounded(client: Any) -> None:
    body = {"model": "seedream", "prompt": "p", "\u001f": 1, "a\r\nb": 2, "\u007f": 3, "é": 4,
            **{f"f{i}": i for i in range(20_000)}}
    status, _, resp = await post(client, "/v1/images/generations", json.dumps(body).encode())
    assert status == 200
    dropped = resp.headers["x-imagegate-dropped-params"]
    assert len(dropped) <= 512 and dropped.endswith(" more")
    assert dropped.startswith("%1F,a%0D%0Ab,f0,f1,")  # sorted, then encoded


async def test_the_first_bad_image_cancels_the_other_downloads(client: Any,
                                                               aiohttp_server: Any) -> None:
    started, cancelled = [], []

    async def slow(request: web.Request) -> web.Response:
        started.append(request.path)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(request.path)
            raise
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", slow)
    images = await aiohttp_server(app)
    urls = [{"image_url": str(images.make_url(f"/{i}.png"))} for i in range(4)]
    body = {"model": "seedream", "prompt": "p", "images": [*urls, {"image_url": "data:,x"}]}
    began = time.perf_counter()
    status, answer, _ = await post(client, "/v1/images/edits", json.dumps(body).encode())
    assert status == 400 and answer["error"]["param"] == "images[4]"
    assert time.perf_counter() - began < 5  # at once, not after the slow downloads
    for _ in range(200):
        if len(cancelled) == len(started):
            break
        await asyncio.sleep(0.01)
    assert len(cancelled) == len(started)  # no download outlives the 400
