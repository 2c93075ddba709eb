"""Edits fail over: a multipart edit streamed to an OpenAI route is copied to a spool file as it
passes, so an attempt that fails before an answer began reaching the client is replayed, byte
for byte, to the next route of any type, without holding the upload in memory."""
from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
from aiohttp import web
from PIL import Image

from tests.conftest import make_config
from tests.redis_server import free_port
from tests.upstreams import openai as openai_mock
from tests.upstreams.openai import PNG_B64, png_bytes

BOUNDARY = "----imagegate-failover"


def openai_provider(url: str) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "api_key": openai_mock.API_KEY}



async def primary_and_backup(aiohttp_server: Any, gateway: Any, primary: Any, backup: Any,
                             **app_options: Any) -> Any:
    """A gateway whose gpt-image-1 edits go to `primary`, then fall back to `backup`."""
    urls = []
    for handler in (primary, backup):
        app = web.Application(**app_options)
        app.router.add_post("/images/edits", handler)
        urls.append(str((await aiohttp_server(app)).make_url("")).rstrip("/"))
    config = make_config(providers={"primary": openai_provider(urls[0]),
                                    "backup": openai_provider(urls[1])},
                         models={"gpt-image-1": {"routes": [
                             {"provider": "primary"}, {"provider": "backup", "priority": 1}]}})
    return await gateway(config)

async def test_an_edit_fails_over_from_a_failing_openai_route(aiohttp_server: Any,
                                                              gateway: Any) -> None:
    first, second = openai_mock.Recorder(mode="server_error"), openai_mock.Recorder()
    urls = [str((await aiohttp_server(openai_mock.make_app(r))).make_url("")).rstrip("/")
            for r in (first, second)]
    config = make_config(providers={"primary": openai_provider(urls[0]),
                                    "backup": openai_provider(urls[1])},
                         models={"gpt-image-1": {"routes": [
                             {"provider": "primary"}, {"provider": "backup", "priority": 1}]}})
    client = await gateway(config)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    image, mask = png_bytes((9, 8, 7), size=300), png_bytes((0, 0, 0))
    try:
        raw = await sdk.images.with_raw_response.edit(
            model="gpt-image-1", prompt="p", image=("a.png", image, "image/png"),
            mask=("m.png", mask, "image/png"))
    finally:
        await sdk.close()
    assert raw.headers["x-imagegate-provider"] == "backup"
    assert raw.headers["x-imagegate-attempts"] == "2"
    assert raw.parse().data[0].b64_json == PNG_B64
    sent = [[(p.name, p.filename, p.sha256) for p in r.last.parts] for r in (first, second)]
    assert sent[0] == sent[1]  # the very same form, replayed from the spool
    assert ("image", "a.png", hashlib.sha256(image).hexdigest()) in sent[1]
    assert ("mask", "m.png", hashlib.sha256(mask).hexdigest()) in sent[1]


async def test_an_edit_replays_to_an_adapted_route(gateway: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused before any answer
    config = make_config(providers={"openai": openai_provider(dead)},
                         models={"gpt-image-1": {"routes": [
                             {"provider": "openai"},
                             {"provider": "local", "model": "local", "priority": 1}]}})
    client = await gateway(config)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    try:
        raw = await sdk.images.with_raw_response.edit(
            model="gpt-image-1", prompt="p",
            image=("a.png", png_bytes((200, 10, 10), size=48), "image/png"))
    finally:
        await sdk.close()
    assert raw.headers["x-imagegate-provider"] == "local"
    result = raw.parse()
    import base64
    import io

    edited = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert edited.size == (48, 48)  # the local edit of the very image sent


SIZE = 50 * 1024 * 1024
CHUNK = 256 * 1024


def pattern(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest() * (CHUNK // 32)


def head() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
            f"gpt-image-1\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\""
            f"\r\n\r\np\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def file_bytes() -> tuple[int, str]:
    digest = hashlib.sha256(PNG_HEAD)
    for i in range((SIZE - len(PNG_HEAD)) // CHUNK):
        digest.update(pattern(i))
    return len(PNG_HEAD) + (SIZE - len(PNG_HEAD)) // CHUNK * CHUNK, digest.hexdigest()


async def body() -> AsyncIterator[bytes]:
    yield head() + PNG_HEAD
    for i in range((SIZE - len(PNG_HEAD)) // CHUNK):
        yield pattern(i)
    yield TAIL


async def test_a_50_mb_edit_fails_over_byte_exact_without_holding_it(
        aiohttp_server: Any, gateway: Any) -> None:
    seen: dict[str, Any] = {}

    async def gives_up(request: web.Request) -> web.Response:
        await request.content.readexactly(1024 * 1024)  # reads a little, then fails
        seen["first"] = True
        return web.json_response({"error": {"message": "overloaded", "type": "server_error",
                                             "param": None, "code": None}}, status=503)

    async def hashes(request: web.Request) -> web.Response:
        reader = await request.multipart()
        async for part in reader:
            if part.filename:  # type: ignore[union-attr]
                digest, size = hashlib.sha256(), 0
                while chunk := await part.read_chunk():  # type: ignore[union-attr]
                    digest.update(chunk)
                    size += len(chunk)
                seen["file"] = (size, digest.hexdigest())
            else:
                await part.release()
        return web.json_response({"created": 1, "data": [{"b64_json": PNG_B64}]})

    client = await primary_and_backup(aiohttp_server, gateway, gives_up, hashes,
                                      client_max_size=SIZE * 2)
    length = len(head()) + file_bytes()[0] + len(TAIL)
    tracemalloc.start()
    try:
        resp = await client.post("/v1/images/edits", data=body(), headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(length)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 200, await resp.text()
    assert resp.headers["x-imagegate-provider"] == "backup"
    assert seen["first"] and seen["file"] == file_bytes()
    assert peak < 16 * 1024 * 1024  # the 50 MB upload was never held in memory


async def test_an_answer_already_streaming_is_not_replayed(aiohttp_server: Any,
                                                           gateway: Any) -> None:
    calls = {"primary": 0, "backup": 0}

    async def breaks(request: web.Request) -> web.StreamResponse:
        calls["primary"] += 1
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b'event: image_edit.partial_image\ndata: {"type":"x"}\n\n')
        assert request.transport is not None
        request.transport.close()  # the provider dies mid-answer
        return out

    async def fine(request: web.Request) -> web.Response:
        calls["backup"] += 1
        return web.json_response({"created": 1, "data": [{"b64_json": PNG_B64}]})

    client = await primary_and_backup(aiohttp_server, gateway, breaks, fine)
    form = aiohttp.FormData()
    form.add_field("model", "gpt-image-1")
    form.add_field("prompt", "p")
    form.add_field("stream", "true")
    form.add_field("image", png_bytes(), filename="a.png", content_type="image/png")
    resp = await client.post("/v1/images/edits", data=form)
    await resp.read()
    assert resp.headers["x-imagegate-provider"] == "primary"
    assert calls == {"primary": 1, "backup": 0}



async def test_a_body_that_cannot_be_read_is_the_clients_fault() -> None:
    import pytest
    from imagegate.config.errors import GatewayError
    from imagegate.middlewares.forms import Form
    from imagegate.proxy.replay import Tee

    async def broken() -> AsyncIterator[Any]:
        raise ConnectionResetError("the client went away")
        yield  # an async generator

    form = Form(b"b", {}, {}, {}, broken(), None)
    tee = Tee(form)
    with pytest.raises(GatewayError) as info:
        async for _ in form.rest():
            pass
    assert info.value.status == 400 and "could not be read" in info.value.message
    form.close()
    assert tee.file.closed
