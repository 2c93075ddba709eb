"""A strict HTTP/1.1 client over a raw socket: sends any bytes, checks the answer's framing."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


class FramingError(AssertionError):
    """The answer was not a well-framed HTTP/1.1 response."""


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    closes: bool = False  # the server said `Connection: close`
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Conn:
    """One keep-alive connection; `exchange` sends bytes and reads exactly one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer)

    async def exchange(self, data: bytes, timeout: float = 10.0, *,
                       head: bool = False, interim: bool = False) -> Reply:
        self.writer.write(data)
        await self.writer.drain()
        reply = await asyncio.wait_for(self.read_reply(head=head), timeout)
        while reply.status == 100 and interim:  # `Expect: 100-continue`: the answer follows
            reply = await asyncio.wait_for(self.read_reply(head=head), timeout)
        return reply

    async def read_reply(self, *, head: bool = False) -> Reply:
        try:
            raw_head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise FramingError(f"empty or cut reply: {exc.partial[:200]!r}") from None
        lines = raw_head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
            raise FramingError(f"bad status line {lines[0][:200]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or any(c < 0x21 or c > 0x7E for c in name):
                raise FramingError(f"bad header line {line[:200]!r}")
            if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
                raise FramingError(f"control character in header {name!r}")
            headers.append((name.decode(), value.strip().decode("latin-1")))
        reply = Reply(int(parts[1]), headers, b"", raw_head)
        connection = (reply.header("connection") or "").lower()
        reply.closes = connection == "close" or (
            parts[0] == b"HTTP/1.0" and connection != "keep-alive")
        # a HEAD the server could not parse is answered as HTTP/1.0 with its body: it could
        # not know the method
        if (head and parts[0] == b"HTTP/1.1") or reply.status in (204, 304) or (
                100 <= reply.status < 200):
            return reply
        reply.body = await self._read_body(reply)
        return reply

    async def _read_body(self, reply: Reply) -> bytes:
        length = reply.header("content-length")
        chunked = (reply.header("transfer-encoding") or "").lower() == "chunked"
        if length is not None and chunked:
            raise FramingError("both Content-Length and chunked")
        try:
            if chunked:
                return await self._read_chunked()
            if length is not None:
                if not length.isdigit():
                    raise FramingError(f"bad Content-Length {length!r}")
                return await self.reader.readexactly(int(length))
        except asyncio.IncompleteReadError as exc:
            raise FramingError(f"body cut short after {len(exc.partial)} bytes") from None
        if not reply.closes:
            raise FramingError("no length, not chunked, and not Connection: close")
        return await self.reader.read()

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise FramingError(f"bad chunk size {size_line[:80]!r}") from None
            if size == 0:
                trailer = await self.reader.readuntil(b"\r\n")
                if trailer != b"\r\n":
                    raise FramingError("trailers are not expected")
                return bytes(out)
            out += await self.reader.readexactly(size)
            if await self.reader.readexactly(2) != b"\r\n":
                raise FramingError("chunk not followed by CRLF")

    async def leftover(self, wait_s: float = 0.05) -> bytes:
        """Bytes the server sent beyond the answers read (a desync), b"" when none."""
        try:
            return await asyncio.wait_for(self.reader.read(65536), wait_s)
        except TimeoutError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def request(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]],
            body: bytes = b"", *, length: bool = True) -> bytes:
    """Bytes of one request; header values are written as given (latin-1), nothing checked."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    names = {k.lower() for k, _ in items}
    if "host" not in names:
        items.insert(0, ("Host", "127.0.0.1"))
    if length and "content-length" not in names and "transfer-encoding" not in names and (
            body or method in ("POST", "PUT")):
        items.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1", "replace")
    for k, v in items:
        head += k.encode("latin-1", "replace") + b": " + v.encode("utf-8", "surrogateescape") \
            + b"\r\n"
    return head + b"\r\n" + body
