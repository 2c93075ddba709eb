"""Multipart image forms: read the head to route, stream or spool the rest, validate files."""
from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO

from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.images import IMAGE_TYPES, InputImage, sniff_mime
from imagegate.middlewares.multipart import Event, PartInfo, boundary_of, scan

CHUNK = 256 * 1024
MAX_TEXT_BYTES = 1024 * 1024  # all text fields together; prompts are at most 32000 chars
FILE_FIELDS = {"image": "image", "image[]": "image", "mask": "mask"}


@dataclass
class Form:
    boundary: bytes
    fields: dict[str, str]
    raw_fields: dict[str, bytes]
    part_sizes: dict[str, int]
    events: AsyncIterator[Event]
    content_length: int | None  # of the body the events replay, when known
    spool: IO[bytes] | None = None
    unread: bool = True  # no event of the rest taken yet: it can still go anywhere

    def rest(self) -> AsyncIterator[Event]:
        """The body's events from the head on; they can be taken once."""
        self.unread = False
        return self.events

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


async def _counted(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > limit:
            raise GatewayError("request_too_large", "The request body is larger than the "
                               f"gateway accepts ({limit} bytes).")
        yield chunk


async def _chain(first: Iterable[Event], rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    for ev in first:
        yield ev
    async for ev in rest:
        yield ev


async def _file_chunks(spool: IO[bytes]) -> AsyncIterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(CHUNK):
        yield chunk


def is_file(part: PartInfo) -> bool:
    return part.filename is not None or part.name in FILE_FIELDS


class _Fields:
    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.raw: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}  # a text part's bytes, its delimiter and headers included
        self.current: PartInfo | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.before = 0  # raw bytes since the last part ended: the next part's delimiter, headers
        self.part_bytes = 0

    def feed(self, ev: Event) -> None:
        if ev.kind == "raw":
            self.before += len(ev.data)
        elif ev.kind == "part":
            self.current, self.chunks = ev.part, []
            self.part_bytes, self.before = self.before, 0
        elif ev.kind == "data" and self.current is not None and not is_file(self.current):
            self.size += len(ev.data)
            if self.size > MAX_TEXT_BYTES:
                raise GatewayError("invalid_value", "The form's text fields are too large.")
            self.chunks.append(ev.data)
        elif ev.kind == "end" and self.current is not None and not is_file(self.current):
            if self.current.name in self.raw:
                raise GatewayError("invalid_value", f"The field '{self.current.name}' is sent "
                                   "more than once.", param=self.current.name)
            raw = b"".join(self.chunks)
            self.raw[self.current.name] = raw
            self.sizes[self.current.name] = self.part_bytes + len(raw)
            self.text[self.current.name] = raw.decode("utf-8", "replace")


async def read_form(request: web.Request, max_bytes: int,
                    needed: tuple[str, ...] = ("model", "prompt")) -> Form:
    """Reads text fields up to the first file; spools to disk when a needed field comes later."""
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    length = request.content_length
    if length is not None and length > max_bytes:
        raise GatewayError("request_too_large", f"The request body is larger than the gateway "
                           f"accepts ({max_bytes} bytes).")
    events = scan(boundary, _counted(request, max_bytes))
    seen: list[Event] = []
    fields = _Fields()
    async for ev in events:
        seen.append(ev)
        if ev.kind == "part" and is_file(ev.part) and not all(n in fields.text for n in needed):
            return await _spool(boundary, seen, events, fields)
        if ev.kind == "part" and is_file(ev.part):
            return Form(boundary, fields.text, fields.raw, fields.sizes, _chain(seen, events),
                        length)
        fields.feed(ev)
    return Form(boundary, fields.text, fields.raw, fields.sizes, _replay(seen), length)


async def _replay(events: list[Event]) -> AsyncIterator[Event]:
    for ev in events:
        yield ev


async def _spool(boundary: bytes, seen: list[Event], events: AsyncIterator[Event],
                 fields: _Fields) -> Form:
    spool = tempfile.TemporaryFile(prefix="imagegate-")  # on disk, never held in memory
    try:
        for ev in seen:
            spool.write(ev.data)
        fields.feed(seen[-1])
        async for ev in events:
            spool.write(ev.data)
            fields.feed(ev)
        spool.flush()
        size = os.fstat(spool.fileno()).st_size
    except BaseException:
        spool.close()
        raise
    return Form(boundary, fields.text, fields.raw, fields.sizes,
                scan(boundary, _file_chunks(spool)), size, spool=spool)


async def take_whole(form: Form) -> IO[bytes]:
    """The whole body on disk, handed to the caller (who closes it; `form.close()` no longer
    does), so it can be read more than once (`spooled_events`, `reread`)."""
    spool = form.spool
    if spool is None:
        spool = tempfile.TemporaryFile(prefix="imagegate-")  # on disk, never held in memory
        try:
            async for ev in form.rest():
                spool.write(ev.data)
            spool.flush()
        except BaseException:
            spool.close()
            raise
        form.content_length = os.fstat(spool.fileno()).st_size
    form.spool = None
    reread(form, spool)
    return spool


def spooled_events(form: Form, spool: IO[bytes]) -> AsyncIterator[Event]:
    return scan(form.boundary, _file_chunks(spool))


def reread(form: Form, spool: IO[bytes]) -> None:
    """The form reads its events from the start of its spooled body again."""
    form.events, form.unread = spooled_events(form, spool), True


@dataclass
class FileCheck:
    """Validates file parts as they pass: field names, counts, emptiness, real image type."""

    max_images: int
    images: int = 0
    masks: int = 0
    part: PartInfo | None = None
    head: bytes = b""
    size: int = 0
    mimes: list[str] = field(default_factory=list)

    def feed(self, ev: Event) -> None:
        if ev.kind == "part":
            self.part = ev.part if is_file(ev.part) else None
            if self.part is not None:
                self._open(self.part)
        elif self.part is None:
            return
        elif ev.kind == "data":
            if len(self.head) < 16:
                self.head += ev.data[: 16 - len(self.head)]
            self.size += len(ev.data)
        elif ev.kind == "end":
            self._close(self.part)

    def _open(self, part: PartInfo) -> None:
        kind = FILE_FIELDS.get(part.name)
        if kind is None:
            raise GatewayError("invalid_value", f"Unexpected file field '{part.name}'.",
                               param=part.name)
        if kind == "mask":
            self.masks += 1
            if self.masks > 1:
                raise GatewayError("invalid_value", "Only one mask may be sent.", param="mask")
        else:
            self.images += 1
            if self.images > self.max_images:
                raise GatewayError("invalid_value", f"Too many images: at most "
                                   f"{self.max_images} may be sent.", param="image")
        self.head, self.size = b"", 0

    def _close(self, part: PartInfo) -> None:
        param = FILE_FIELDS[part.name]
        if self.size == 0:
            raise GatewayError("invalid_value", f"The file sent as '{part.name}' is empty.",
                               param=param)
        mime = sniff_mime(self.head)
        if mime not in IMAGE_TYPES:
            raise GatewayError("invalid_value", f"The file sent as '{part.name}' is not a PNG, "
                               "JPEG or WebP image.", param=param)
        self.mimes.append(mime)
        self.part = None

    def finish(self) -> None:
        if self.images == 0:
            raise GatewayError("invalid_value", "Missing required parameter: 'image'.",
                               param="image")


def extra_part(boundary: bytes, name: str, value: str) -> bytes:
    return (b"\r\n--" + boundary + b'\r\nContent-Disposition: form-data; name="'
            + name.encode() + b'"\r\n\r\n' + value.encode())


class FormUpload:
    """The body to send upstream, as an async iterable for aiohttp: every byte as sent but the
    model value, added fields, and dropped text fields. A bad part or a malformed body is the
    client's fault, not the route's: aiohttp's body writer would bury it, so it is kept in
    `failure`, the upload's own result."""

    def __init__(self, form: Form, check: FileCheck, model: str, extra: Mapping[str, str],
                 drop: frozenset[str] = frozenset()) -> None:
        self.form, self.check, self.model = form, check, model
        self.extra, self.drop = extra, drop
        self.failure: GatewayError | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in _rewritten(self.form, self.check, self.model.encode(),
                                          self.extra, self.drop):
                yield chunk
        except GatewayError as error:
            self.failure = error
            raise


async def _rewritten(form: Form, check: FileCheck, new_model: bytes, extra: Mapping[str, str],
                     drop: frozenset[str]) -> AsyncIterator[bytes]:
    in_model = skipping = False
    pending: list[bytes] = []  # a part's delimiter and headers, held until the part is named
    async for ev in form.rest():
        check.feed(ev)
        kind = ev.kind
        if kind == "raw":
            pending.append(ev.data)
        elif kind == "part":
            text = not is_file(ev.part)
            skipping = text and ev.part.name in drop
            in_model = text and ev.part.name == "model"
            if not skipping:
                yield b"".join(pending)
            pending.clear()
        elif kind == "data":
            if not (in_model or skipping):
                yield ev.data
        elif kind == "end":
            if in_model:
                yield new_model
            in_model = skipping = False
        else:  # close
            check.finish()
            yield b"".join(pending)
            for name, value in extra.items():
                yield extra_part(form.boundary, name, value)
            yield ev.data


def forward_length(form: Form, model: str, extra: Mapping[str, str],
                   drop: frozenset[str] = frozenset()) -> int | None:
    if form.content_length is None:
        return None
    old = len(form.raw_fields.get("model", b""))
    added = sum(len(extra_part(form.boundary, k, v)) for k, v in extra.items())
    removed = sum(form.part_sizes[name] for name in drop)
    return form.content_length - old + len(model.encode()) + added - removed


Collected = tuple[list[InputImage], InputImage | None, dict[str, str]]


async def collect_files(form: Form, check: FileCheck) -> Collected:
    """Reads every file into memory, for adapters that must re-encode them; also returns the
    text fields that came after the first file (the head only read up to it)."""
    images: list[InputImage] = []
    mask: InputImage | None = None
    chunks: list[bytes] = []
    part: PartInfo | None = None
    late = _Fields()  # text parts after the first file (a spooled form already has them all)
    seen_file = False
    async for ev in form.rest():
        check.feed(ev)
        seen_file = seen_file or (ev.kind == "part" and is_file(ev.part))
        if seen_file:
            late.feed(ev)
        if ev.kind == "part":
            part, chunks = (ev.part if is_file(ev.part) else None), []
        elif ev.kind == "data" and part is not None:
            chunks.append(ev.data)
        elif ev.kind == "end" and part is not None:
            item = InputImage(b"".join(chunks), check.mimes[-1], part.filename or part.name)
            if FILE_FIELDS[part.name] == "mask":
                mask = item
            else:
                images.append(item)
            part = None
        elif ev.kind == "close":
            check.finish()
    return images, mask, {k: v for k, v in late.text.items() if k not in form.fields}
