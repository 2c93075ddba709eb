"""An answer kept as it is written, so it can be stored even when its client has hung up."""
from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from imagegate.middlewares.ledger import StoredAnswer

# what a replay repeats; rate-limit, budget and cost headers describe that moment, not the answer
KEPT_HEADERS = ("content-type", "openai-processing-ms")
NOT_KEPT = ("x-imagegate-cost-usd", "x-imagegate-budget-remaining-usd",
            "x-imagegate-budget-remaining-images")
_EVENT_SPLIT = re.compile(rb"\r?\n\r?\n")
_EVENT_TYPE = re.compile(rb"^event:\s*(\S+)", re.MULTILINE)


class TeeWriter(AbstractStreamWriter):
    """Stands in for the request's writer: keeps every body byte written through it and passes
    them on while the client is there; once the client is gone the writes only are kept."""

    def __init__(self, inner: AbstractStreamWriter) -> None:
        self.inner = inner
        self.chunks: list[bytes] = []
        self.alive = True
        self.eof = False

    @property
    def length(self) -> int | None:
        return self.inner.length

    @length.setter
    def length(self, value: int | None) -> None:
        self.inner.length = value

    @property
    def buffer_size(self) -> int:
        return self.inner.buffer_size

    @buffer_size.setter
    def buffer_size(self, value: int) -> None:
        self.inner.buffer_size = value

    @property
    def output_size(self) -> int:
        return self.inner.output_size

    @output_size.setter
    def output_size(self, value: int) -> None:
        self.inner.output_size = value

    async def _send(self, method: Any, *args: Any) -> None:
        if not self.alive:
            return
        try:
            await method(*args)
        except ConnectionError:  # the client hung up; the answer is still being made
            self.alive = False

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.chunks.append(bytes(chunk))
        await self._send(self.inner.write, chunk)

    async def write_eof(self, chunk: bytes = b"") -> None:
        self.chunks.append(bytes(chunk))
        self.eof = True
        await self._send(self.inner.write_eof, chunk)

    async def drain(self) -> None:
        await self._send(self.inner.drain)

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        self.inner.enable_compression(encoding, strategy)

    def enable_chunking(self) -> None:
        self.inner.enable_chunking()

    async def write_headers(self, status_line: str, headers: Any) -> None:
        await self._send(self.inner.write_headers, status_line, headers)

    def send_headers(self) -> None:
        if self.alive:
            try:
                self.inner.send_headers()
            except ConnectionError:
                self.alive = False


def kept_headers(response: web.StreamResponse) -> list[tuple[str, str]]:
    return [(str(k), v) for k, v in response.headers.items()
            if (k.lower() in KEPT_HEADERS or k.lower().startswith("x-imagegate-"))
            and k.lower() not in NOT_KEPT]


def events_kept(body: bytes) -> bytes | None:
    """A finished event stream as a replay sends it: the final events without keep-alives or
    partial images; None when it ended in an error or delivered no image."""
    kept, completed = [], 0
    for block in _EVENT_SPLIT.split(body):
        lines = [line for line in block.splitlines() if line and not line.startswith(b":")]
        if not lines:
            continue
        m = _EVENT_TYPE.search(b"\n".join(lines))
        kind = m.group(1) if m else b""
        if kind == b"error":
            return None
        if kind.endswith(b".partial_image"):
            continue
        completed += kind.endswith(b".completed")
        kept.append(b"\n".join(lines) + b"\n\n")
    return b"".join(kept) if completed else None


def answer_of(response: web.StreamResponse, tee: TeeWriter, expires_at: float
              ) -> StoredAnswer | None:
    """The answer to keep, or None when it is not a finished success (nothing is stored)."""
    if not 200 <= response.status < 300:
        return None
    if not response.prepared:
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes):
            return None
    elif not tee.eof:
        return None  # broken off midway
    else:
        body = b"".join(tee.chunks)
        if response.content_type == "text/event-stream":
            body = events_kept(body)
            if body is None:
                return None
    return StoredAnswer(response.status, kept_headers(response), body, expires_at)
