"""A misbehaving provider: a raw socket server in front of a real mock upstream that forwards
each request and spoils the answer on purpose (bytes aiohttp's own server would refuse to send:
control characters in headers, a redirect, an answer or an event stream cut mid-way without
chunked framing, an image whose header claims 9600x9600)."""
from __future__ import annotations

import asyncio
import base64
import re
import struct
import zlib
from dataclasses import dataclass, field

import aiohttp

from tests.upstreams.common import tiny_image

MODES = ("headers", "redirect", "cut", "sse_cut", "huge")
_B64 = re.compile(rb"[A-Za-z0-9+/]{60,}={0,2}")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 9600) -> bytes:
    """A real PNG header for side x side RGB pixels with a few bytes of data: decoding it would
    allocate side*side*3 bytes (276 MB at 9600); opening it makes Pillow warn."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + _chunk(b"IEND", b""))


BOMB = bomb_png()
SMALL_PNG = tiny_image("PNG", (1, 2, 3))


@dataclass
class Hostile:
    target: str  # the real mock's base URL
    mode: str = "headers"
    seen: list[str] = field(default_factory=list)  # request lines received
    server: asyncio.Server | None = None
    session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> Hostile:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.session is not None:
            await self.session.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, headers = _parse_head(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(f"{method} {path}")
                if not await self._answer(writer, method, path, headers, body):
                    return
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str,
                      headers: dict[str, str], body: bytes) -> bool:
        """Writes one answer; False when the connection is to be closed."""
        if self.mode == "redirect":  # followed, it would succeed: the real mock is there
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + self.target.encode()
                         + path.encode() + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return True
        assert self.session is not None
        # the Host kept: a mock that answers image links names this server, so they come here
        sent = {k: v for k, v in headers.items() if k != "content-length"}
        async with self.session.request(method, self.target + path, headers=sent,
                                        data=body or None) as resp:
            status, ctype, data = resp.status, resp.content_type, await resp.read()
        if self.mode == "huge":
            data = spoil_images(data)
        head = [f"HTTP/1.1 {status} X".encode(), b"Content-Type: " + ctype.encode()]
        if self.mode == "headers":
            head += [b"Retry-After: 1\x01", b"OpenAI-Processing-Ms: 12\x7f3",
                     b"X-Request-Id: req\x01junk", b"Content-Length: " + str(len(data)).encode()]
        elif self.mode in ("cut", "sse_cut"):
            cut = len(data) // 2
            if self.mode == "cut":
                head.append(b"Content-Length: " + str(len(data)).encode())
            else:  # no length, no chunks: the body ends when the connection does
                head.append(b"Connection: close")
            writer.write(b"\r\n".join(head) + b"\r\n\r\n" + data[:cut])
            await writer.drain()
            return False
        else:
            head.append(b"Content-Length: " + str(len(data)).encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + data)
        await writer.drain()
        return True


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, path, headers


def spoil_images(data: bytes) -> bytes:
    """Every image in an answer (base64 in JSON, or the bytes themselves) becomes the bomb."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return BOMB
    bomb64 = base64.b64encode(BOMB)

    def swap(m: re.Match[bytes]) -> bytes:
        try:
            raw = base64.b64decode(m.group(), validate=True)
        except ValueError:
            return m.group()
        return bomb64 if raw[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"RIFF")  \
            or raw[:3] == b"\xff\xd8\xff" else m.group()

    return _B64.sub(swap, data)
