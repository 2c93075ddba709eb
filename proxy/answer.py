"""What an attempt at one route gives back: the client's response and what it delivered."""
from __future__ import annotations

import sys
from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.api import Usage

# Before 3.12.9 asyncio's transport.writelines joins what it is given, and aiohttp hands it a
# response's head and body together: a large answer's body was copied once more on its way out
# (an image answer, ~137 KB: about 9 % of a passthrough request's instructions under callgrind)
_WRITELINES_JOINS = sys.version_info < (3, 12, 9)
HEAD_APART_BYTES = 16 * 1024  # from this size the head goes out on its own write


class BodyResponse(web.Response):
    """web.Response whose head is written on its own before a large body, where asyncio would
    copy the body to put the two in one write: one more small send instead of a copy."""

    async def write_eof(self, data: bytes = b"") -> None:
        writer: Any = self._payload_writer
        body = self._body
        if _WRITELINES_JOINS and writer is not None and not self._eof_sent \
                and isinstance(body, bytes) and len(body) >= HEAD_APART_BYTES \
                and self._compressed_body is None:
            send_headers = getattr(writer, "send_headers", None)  # aiohttp >= 3.12
            if send_headers is not None:
                send_headers()
        await super().write_eof(data)


class Answer(msgspec.Struct):
    response: web.StreamResponse
    images: int  # delivered to the client
    usage: Usage | None = None
    broken: bool = False  # failed after it had begun reaching the client
