"""A byte-exact multipart/form-data scanner: parts are read as they stream, bytes stay as sent."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from config.errors import GatewayError

MAX_HEADER_BYTES = 16 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')

Kind = Literal["raw", "part", "data", "end", "close"]


@dataclass
class PartInfo:
    name: str
    filename: str | None
    content_type: str | None


@dataclass
class Event:
    """`raw` bytes to forward as they are; `part` opens a part; `data` is part body; `end`
    closes it; `close` carries the final delimiter and epilogue."""

    kind: Kind
    data: bytes = b""
    part: PartInfo | None = None


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
    delim = b"--" + boundary
    sep = b"\r\n" + delim
    buf = b""
    state = "preamble"

    async def more() -> bool:
        nonlocal buf
        async for chunk in source:
            if chunk:
                buf += chunk
                return True
        return False

    while True:
        if state == "preamble":
            i = 0 if buf.startswith(delim) else buf.find(sep)
            if i < 0 or len(buf) < len(delim):
                if not await more():
                    raise malformed("no opening boundary")
                continue
            end = i + (len(delim) if i == 0 and buf.startswith(delim) else len(sep))
            yield Event("raw", buf[:end])
            buf, state = buf[end:], "after_delim"
        elif state == "after_delim":
            if len(buf) < 2 and not await more():
                raise malformed("the body ends after a boundary")
            if len(buf) < 2:
                continue
            if buf.startswith(b"--"):
                rest = [buf]
                async for chunk in source:
                    rest.append(chunk)
                yield Event("close", b"".join(rest))
                return
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > 1024 or not await more():
                    raise malformed("a boundary line is not terminated")
                continue
            yield Event("raw", buf[: eol + 2])
            buf, state = buf[eol + 2 :], "headers"
        elif state == "headers":
            i = 0 if buf.startswith(b"\r\n") else buf.find(b"\r\n\r\n")
            if i < 0 or (i == 0 and len(buf) < 2):
                if len(buf) > MAX_HEADER_BYTES:
                    raise malformed("part headers are too large")
                if not await more():
                    raise malformed("the body ends inside part headers")
                continue
            end = 2 if i == 0 else i + 4
            info = parse_part_headers(buf[:i])
            yield Event("raw", buf[:end])
            yield Event("part", part=info)
            buf, state = buf[end:], "body"
        else:  # body
            i = buf.find(sep)
            if i >= 0:
                if i:
                    yield Event("data", buf[:i])
                yield Event("end")
                yield Event("raw", sep)
                buf, state = buf[i + len(sep) :], "after_delim"
                continue
            keep = len(sep) - 1  # a delimiter may straddle two chunks
            if len(buf) > keep:
                yield Event("data", buf[:-keep])
                buf = buf[-keep:]
            if not await more():
                raise malformed("the body ends inside a part")
