"""A multipart upload streamed to an OpenAI route is also copied to a spool file on disk as it
passes (never into memory), so that when the attempt fails before an answer began reaching the
client the body can be sent again, byte for byte, to the next route of any type."""
from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from typing import IO

from imagegate.config.errors import GatewayError
from imagegate.middlewares.forms import CHUNK, Form
from imagegate.middlewares.multipart import Event, scan


async def _next(events: AsyncIterator[Event]) -> Event | None:
    """The body's next event. A body that cannot be read (a broken Content-Encoding, a client
    gone) is the client's fault, never the route's: a 400, whoever is reading."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None
    except GatewayError:
        raise
    except Exception as exc:
        raise GatewayError("invalid_value", "The request body could not be read "
                           f"({type(exc).__name__}).") from None


async def _chunks(fd: int) -> AsyncIterator[bytes]:
    """The spool from its start, read at explicit offsets: no shared file position, so a reader
    left behind by a failed attempt cannot disturb the next one."""
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        offset += len(chunk)
        yield chunk


class Tee:
    """Wraps a form's events: each one is written to the spool as it is taken. The client's body
    is read by a task of its own, shielded, so a failed upstream upload (its writer cancelled)
    leaves the body and the spool consistent; `rewind` reads the rest onto the spool and makes
    the form read from the spool's start. The spool is bounded by server.max_request_bytes
    (the body reader refuses more) and closed with the form."""

    def __init__(self, form: Form) -> None:
        self.form = form
        self.source: AsyncIterator[Event] | None = None
        self.pending: asyncio.Future[Event | None] | None = None
        self.rewound = False
        if form.spool is not None:  # the head already spooled it whole
            self.file: IO[bytes] = form.spool
            self.whole = True
        else:
            self.file = tempfile.TemporaryFile(prefix="imagegate-replay-")
            form.spool = self.file  # form.close() closes it
            self.source, self.whole = form.events, False
            form.events = self._events()

    def _write(self, data: bytes) -> None:
        self.file.write(data)

    async def _take(self) -> Event | None:
        assert self.source is not None
        if self.pending is None:
            self.pending = asyncio.ensure_future(_next(self.source))
        pending = self.pending
        event = await asyncio.shield(pending)  # a cancelled upload leaves the read running
        if self.pending is pending:  # each event reaches the spool once, in order
            self.pending = None
            if event is None:
                self.whole = True
            else:
                self._write(event.data)
        return event

    async def _events(self) -> AsyncIterator[Event]:
        while not self.rewound and (event := await self._take()) is not None:
            yield event

    async def rewind(self) -> None:
        """The whole body on the spool, and the form reading it again from the start."""
        self.rewound = True  # an upload left behind takes no more of the body
        while not self.whole and await self._take() is not None:
            pass
        self.file.flush()
        self.form.content_length = os.fstat(self.file.fileno()).st_size
        self.form.events = scan(self.form.boundary, _chunks(self.file.fileno()))
        self.form.unread = True
