"""Provider images made into what the client asked for: format (Pillow), then b64_json or a
signed link to the gateway's store (or a presigned one to the bucket)."""
from __future__ import annotations

import asyncio
import base64
import binascii
import io

import msgspec
import structlog
from aiohttp import web
from imagegate.adapters.base import (
    GeneratedImage,
    ImageRequest,
)
from imagegate.config.api import Image, ImagesResponse
from imagegate.config.errors import GatewayError
from imagegate.config.images import sniff_mime, within_pixels
from imagegate.proxy.fetch import Fetcher
from imagegate.proxy.storage import ImageStore
from PIL import Image as PILImage

log = structlog.get_logger("imagegate.images")
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
LOSSY = ("image/jpeg", "image/webp")  # where output_compression means something
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_encode = msgspec.json.Encoder().encode


def transcode(data: bytes, mime: str, fmt: str | None,
              compression: int | None) -> tuple[bytes, str]:
    """Re-encodes to the asked format with Pillow when the provider made another one."""
    target = MIMES.get(fmt or "", mime)
    if target == mime and compression is None:
        return data, mime
    if not within_pixels(data):  # a 9600x9600 answer is refused before Pillow opens it
        raise ValueError("too many pixels to decode")
    with PILImage.open(io.BytesIO(data)) as opened:
        opened.load()
        im: PILImage.Image = opened
        if target == "image/jpeg" and im.mode not in ("RGB", "L"):
            rgba = im.convert("RGBA")  # JPEG has no alpha: flattened onto white
            im = PILImage.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        out = io.BytesIO()
        # unset: 95, Pillow's advised maximum (100 turns JPEG quantisation off and balloons)
        options = {} if target == "image/png" else {
            "quality": 95 if compression is None else compression}
        im.save(out, PIL_FORMATS[target], **options)
    return out.getvalue(), target


def bad_image() -> GatewayError:
    return GatewayError("upstream_unavailable", "The provider answered with an image that "
                        "could not be read.")


def real_mime(data: bytes) -> str:
    """A provider image's real type; a 200 carries real images only."""
    mime = sniff_mime(data[:16])
    if mime is None:
        raise bad_image()
    return mime


def decode_image(b64: str) -> tuple[bytes, str]:
    """A provider's base64 image: its bytes and real type."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise bad_image() from None
    return data, real_mime(data)


class Finisher:
    """Turns provider images into what the client asked for: format, then b64_json or url."""

    def __init__(self, store: ImageStore, fetcher: Fetcher) -> None:
        self.store, self.fetcher = store, fetcher

    async def image(self, img: GeneratedImage, req: ImageRequest, base_url: str,
                    formats_done: bool = False) -> Image:
        revised = img.revised_prompt if img.revised_prompt else msgspec.UNSET
        if formats_done and img.b64_json is not None and req.response_format != "url":
            return Image(b64_json=img.b64_json, revised_prompt=revised)  # nothing to change
        if img.b64_json is not None:
            data, mime = decode_image(img.b64_json)
        else:
            try:
                data = await self.fetcher.fetch(img.url or "", "url")
            except GatewayError as exc:
                raise GatewayError("upstream_unavailable", "The provider's image could not be "
                                   "downloaded.") from exc
            mime = real_mime(data)
        wanted = MIMES.get(req.output_format or "", mime)
        recompress = req.output_compression is not None and wanted in LOSSY
        if not formats_done and (wanted != mime or recompress):
            try:
                data, mime = await asyncio.to_thread(transcode, data, mime, req.output_format,
                                                     req.output_compression)
            except (OSError, ValueError, PILImage.DecompressionBombError):
                raise bad_image() from None
        if req.response_format == "url":
            # a stream's completed event carries b64_json always (OpenAI's schema), url beside
            b64 = base64.b64encode(data).decode() if req.stream else msgspec.UNSET
            return Image(url=await self.host(data, mime, base_url), b64_json=b64,
                         revised_prompt=revised)
        return Image(b64_json=base64.b64encode(data).decode(), revised_prompt=revised)

    async def host(self, data: bytes, mime: str, base_url: str) -> str:
        """Stores an image and answers its signed (or presigned), expiring link."""
        return await self.store.host(data, mime, base_url)


def json_response(body: ImagesResponse, headers: dict[str, str]) -> web.Response:
    return web.Response(body=_encode(body), content_type="application/json", headers=headers)
