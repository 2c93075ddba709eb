"""A byte-exact multipart/form-data scanner: parts are read as they stream, bytes stay as sent."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from imagegate.config.errors import GatewayError

MAX_HEADER_BYTES = 16 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')

Kind = Literal["raw", "part", "data", "end", "close"]


@dataclass(frozen=True)
class PartInfo:
    name: str
    filename: str | None
    content_type: str | None


NO_PART = PartInfo("", None, None)


@dataclass
class Event:
    """`raw` bytes to forward as they are; `part` opens a part; `data` is part body; `end`
    closes it; `close` carries the final delimiter and epilogue."""

    kind: Kind
    data: bytes = b""
    part: PartInfo = NO_PART  # set on `part` events


def malformed(detail: str) -> GatewayError:
    return GatewayError("invalid_value", f"The multipart body is malformed: {detail}.")


def boundary_of(content_type: str) -> bytes:
    for m in _PARAM.finditer(content_type):
        if m.group(1).lower() == "boundary":
            value = m.group(2) if m.group(2) is not None else m.group(3)
            if value and len(value) <= 70:
                return value.encode("latin-1")
    raise GatewayError("invalid_value", "The multipart Content-Type has no valid boundary.")


def parse_part_headers(block: bytes) -> PartInfo:
    name = filename = content_type = None
    for line in block.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "content-disposition":
            for m in _PARAM.finditer(";" + value.split(";", 1)[1] if ";" in value else ""):
                v = m.group(2) if m.group(2) is not None else m.group(3)
                if m.group(1).lower() == "name":
                    name = v
                elif m.group(1).lower() == "filename":
                    filename = v
        elif key == "content-type":
            content_type = value.strip().split(";")[0].strip().lower()
    if name is None:
        raise malformed("a part has no name")
    return PartInfo(name, filename, content_type)


async def scan(boundary: bytes, source: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Yields events whose raw + data bytes, concatenated, are exactly the input."""
    scanner = _Scanner(boundary, source)
    step: Step | None = scanner.preamble
    while step is not None:
        events, step = await step()
        for event in events:
            yield event


class _Scanner:
    """One method per state; each returns the events it found and the next state."""

    def __init__(self, boundary: bytes, source: AsyncIterator[bytes]) -> None:
        self.delim = b"--" + boundary
        self.sep = b"\r\n" + self.delim
        self.source = source
        self.buf = b""

    async def more(self, why: str) -> None:
        async for chunk in self.source:
            if chunk:
                self.buf += chunk
                return
        raise malformed(why)

    async def preamble(self) -> StepResult:
        buf, delim = self.buf, self.delim
        first = len(buf) >= len(delim) and buf.startswith(delim)
        i = 0 if first else buf.find(self.sep)
        if i < 0 or len(buf) < len(delim):
            await self.more("no opening boundary")
            return [], self.preamble
        end = len(delim) if first else i + len(self.sep)
        self.buf = buf[end:]
        return [Event("raw", buf[:end])], self.after_delim

    async def after_delim(self) -> StepResult:
        if len(self.buf) < 2:
            await self.more("the body ends after a boundary")
            return [], self.after_delim
        if self.buf.startswith(b"--"):  # the closing delimiter: the rest is epilogue
            rest = [self.buf]
            async for chunk in self.source:
                rest.append(chunk)
            return [Event("close", b"".join(rest))], None
        eol = self.buf.find(b"\r\n")
        if eol < 0:
            if len(self.buf) > 1024:
                raise malformed("a boundary line is not terminated")
            await self.more("a boundary line is not terminated")
            return [], self.after_delim
        line, self.buf = self.buf[: eol + 2], self.buf[eol + 2 :]
        return [Event("raw", line)], self.headers

    async def headers(self) -> StepResult:
        buf = self.buf
        i = 0 if buf.startswith(b"\r\n") else buf.find(b"\r\n\r\n")
        if i < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise malformed("part headers are too large")
            await self.more("the body ends inside part headers")
            return [], self.headers
        end = 2 if i == 0 else i + 4
        self.buf = buf[end:]
        return [Event("raw", buf[:end]), Event("part", part=parse_part_headers(buf[:i]))], self.body

    async def body(self) -> StepResult:
        buf, sep = self.buf, self.sep
        i = buf.find(sep)
        if i >= 0:
            self.buf = buf[i + len(sep) :]
            found = [Event("data", buf[:i])] if i else []
            return [*found, Event("end"), Event("raw", sep)], self.after_delim
        keep = len(sep) - 1  # a delimiter may straddle two chunks
        events = []
        if len(buf) > keep:
            events, self.buf = [Event("data", buf[:-keep])], buf[-keep:]
        await self.more("the body ends inside a part")
        return events, self.body


StepResult = tuple[list[Event], "Step | None"]
Step = Callable[[], Awaitable[StepResult]]
