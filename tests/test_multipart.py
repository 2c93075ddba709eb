"""The byte-exact multipart scanner: any chunking gives back the body, parts are found."""
from __future__ import annotations

import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from imagegate.config.errors import GatewayError
from imagegate.middlewares.multipart import boundary_of, scan

BOUNDARY = "b0undary-XYZ"


async def body_of(writer: aiohttp.MultipartWriter) -> bytes:
    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        async def write(self, chunk: bytes) -> None:
            self.data += chunk

    sink = Sink()
    await writer.write(sink)
    return bytes(sink.data)


async def sample_body() -> bytes:
    w = aiohttp.MultipartWriter("form-data", boundary=BOUNDARY)
    w.append("a prompt", {"Content-Disposition": 'form-data; name="prompt"'})
    # file bytes that contain a near-delimiter to trip naive scanners
    part = w.append(bytes(range(256)) * 300 + b"\r\n--" + BOUNDARY[:-1].encode(),
                    {"Content-Type": "image/png"})
    part.set_content_disposition("form-data", name="image[]", filename="a.png")
    w.append("gpt-image-1", {"Content-Disposition": 'form-data; name="model"'})
    return await body_of(w)


async def chunks(body: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=False):
        yield body[a:b]


@pytest.mark.parametrize("seed", range(25))
async def test_any_chunking_reproduces_the_body_and_parts(seed: int) -> None:
    body = await sample_body()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(body)), rng.randint(0, 40)))
    out, parts = b"", []
    async for ev in scan(BOUNDARY.encode(), chunks(body, cuts)):
        if ev.kind == "part":
            parts.append([ev.part, b""])
        elif ev.kind == "data":
            parts[-1][1] += ev.data
        out += ev.data
    assert out == body
    assert [(p.name, p.filename, len(d)) for p, d in parts] == [
        ("prompt", None, 8), ("image[]", "a.png", 256 * 300 + 4 + len(BOUNDARY) - 1),
        ("model", None, 11)]


async def test_truncated_body_is_a_clear_400() -> None:
    body = await sample_body()
    with pytest.raises(GatewayError) as info:
        async for _ in scan(BOUNDARY.encode(), chunks(body[:-40], [])):
            pass
    assert info.value.status == 400 and "malformed" in info.value.message


def test_boundary_is_read_from_the_content_type() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of("multipart/form-data; charset=utf-8; boundary=xyz") == b"xyz"
    with pytest.raises(GatewayError):
        boundary_of("multipart/form-data")
