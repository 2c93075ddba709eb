"""`stream: true` for adapted providers: keep-alive comments while waiting, one event per image."""
from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
import structlog
from aiohttp import web
from imagegate.adapters.base import ImageRequest
from imagegate.config.api import ErrorBody, Image, ImagesResponse, ImageStreamEvent, Usage
from imagegate.config.errors import GatewayError
from imagegate.config.images import image_size, sniff_mime
from imagegate.middlewares.redact import scrub

KEEPALIVE = b": keep-alive\n\n"
log = structlog.get_logger("imagegate.sse")
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


class _ErrorEvent(msgspec.Struct):
    error: ErrorBody
    type: str = "error"


def frame(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


# OpenAI's ImageGenCompletedEvent / ImageEditCompletedEvent enums (openai-openapi, 2026-08):
# values outside them break clients generated from the spec, so each field keeps to them.
EVENT_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
EVENT_QUALITY = {"low": "low", "medium": "medium", "high": "high", "auto": "auto",
                 "standard": "medium", "hd": "high", "xhigh": "high", "max": "high"}
EVENT_BACKGROUNDS = frozenset({"transparent", "opaque", "auto"})
FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


def describe(image: Image, req: ImageRequest) -> tuple[str, str]:
    """(size, output_format) of the image actually made: its real WxH when that is one of
    the schema's sizes (else `auto`, the schema's word for "the model chose"), its real
    format from its bytes."""
    try:
        data = base64.b64decode(image.b64_json) if isinstance(image.b64_json, str) else b""
        found = image_size(data)  # the header only: Pillow never opens it
        if found is None:
            raise ValueError("no image size in the header")
        width, height = found
    except (ValueError, OSError):  # binascii.Error is a ValueError
        return "auto", req.output_format if req.output_format in ("png", "jpeg", "webp") \
            else "png"
    size = f"{width}x{height}"
    return (size if size in EVENT_SIZES else "auto",
            FORMATS.get(sniff_mime(data[:16]) or "", "png"))


def completed_events(body: ImagesResponse, kind: str, req: ImageRequest,
                     partials: list[list[str]] | None = None) -> list[bytes]:
    """One `*.completed` event per image with every field OpenAI's schema requires: b64_json
    always (a `url` answer adds its link beside it), usage on the last; before each, its
    partial renders (when the provider made them) as `partial_image` events, coarse to fine."""
    frames = []
    last = len(body.data) - 1
    usage = body.usage if isinstance(body.usage, Usage) else Usage()
    said_quality = body.quality if isinstance(body.quality, str) else req.quality
    quality = EVENT_QUALITY.get(said_quality or "auto", "auto")
    said_background = body.background if isinstance(body.background, str) else req.background
    background = said_background if said_background in EVENT_BACKGROUNDS else "auto"
    for i, image in enumerate(body.data):
        size, fmt = describe(image, req)
        for k, partial in enumerate(partials[i] if partials and i < len(partials) else []):
            event = ImageStreamEvent(
                type=f"{kind}.partial_image", b64_json=partial, created_at=body.created,
                size=size, quality=quality, background=background, output_format=fmt,
                partial_image_index=k)
            frames.append(frame(event.type, _encode(event)))
        event = ImageStreamEvent(
            type=f"{kind}.completed", b64_json=image.b64_json, url=image.url,
            created_at=body.created, size=size, quality=quality, background=background,
            output_format=fmt, usage=usage if i == last else Usage(),
        )
        frames.append(frame(event.type, _encode(event)))
    return frames


@dataclass
class Streamed(Generic[T]):
    response: web.StreamResponse
    result: T | None  # None when the work failed after the stream had begun


async def stream_images(request: web.Request, work: Awaitable[T],
                        parts: Callable[[T], tuple[ImagesResponse, int, dict[str, str]]],
                        headers: dict[str, str], kind: str, req: ImageRequest,
                        keepalive_s: float,
                        partials: Callable[[T], list[list[str]] | None] | None = None
                        ) -> Streamed[T]:
    """Keep-alives while `work` runs, then its images as events; also what `work` gave (None
    when it failed after the stream had begun). `parts` reads (answer, images not delivered,
    headers naming who answered) from that result. Errors that come before the first byte keep
    their HTTP status; later ones are error events."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=keepalive_s)
        if task.done():
            _, failed, more = parts(task.result())  # a provider error: a plain HTTP error
            headers = {**headers, **more}
            if failed:
                headers["x-imagegate-failed-images"] = str(failed)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                          "Cache-Control": "no-cache", **headers})
        await out.prepare(request)
        while not task.done():
            await out.write(KEEPALIVE)
            await asyncio.wait({task}, timeout=keepalive_s)
        result: T | None = None
        try:
            result = task.result()
            body, _, _ = parts(result)
        except Exception as exc:  # the stream has begun: every failure becomes an error event
            error = exc if isinstance(exc, GatewayError) else GatewayError(
                "server_error", "The gateway failed unexpectedly.")
            if not isinstance(exc, GatewayError):
                log.exception("unhandled_error_in_stream")
            envelope = _ErrorEvent(ErrorBody(scrub(error.message), error.type, error.param,
                                             error.code))
            await out.write(frame("error", _encode(envelope)))
        else:
            made = partials(result) if partials is not None else None
            for data in completed_events(body, kind, req, made):
                await out.write(data)
        await out.write_eof()
        return Streamed(out, result)
    finally:
        if not task.done():
            task.cancel()  # the client hung up: stop the provider calls too
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
