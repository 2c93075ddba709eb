"""Adapted routes: n fan-out, provider calls, then answers normalised (format, url/b64, usage)."""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
from collections.abc import Callable, Sequence

import msgspec
import structlog
from aiohttp import web
from imagegate.adapters.base import (
    GeneratedImage,
    ImageRequest,
    ProviderResult,
    UpstreamRequest,
    UpstreamResponse,
    sniff_mime,
)
from imagegate.config.api import Image, ImagesResponse, Usage
from imagegate.config.errors import GatewayError
from imagegate.proxy.fetch import Fetcher
from imagegate.proxy.storage import ImageStore
from imagegate.proxy.upstream import ProviderState, Upstream
from PIL import Image as PILImage

log = structlog.get_logger("imagegate.images")
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
LOSSY = ("image/jpeg", "image/webp")  # where output_compression means something
PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_encode = msgspec.json.Encoder().encode


def check_capabilities(state: ProviderState, req: ImageRequest) -> None:
    caps, model = state.adapter.capabilities, req.model
    if req.operation == "edit" and not caps.edit:
        raise GatewayError("invalid_value", f"The model '{model}' does not support image "
                           "editing.", param="image")
    if req.operation == "generate" and not caps.generate:
        raise GatewayError("invalid_value", f"The model '{model}' needs an input image.",
                           param="image")
    if req.mask is not None and not caps.mask:
        raise GatewayError("invalid_value", f"The model '{model}' cannot apply a mask.",
                           param="mask")
    if len(req.images) > caps.max_input_images:
        raise GatewayError("invalid_value", f"The model '{model}' takes at most "
                           f"{caps.max_input_images} input images.", param="image")


def split_n(n: int, per_call: int) -> list[int]:
    full, rest = divmod(n, per_call)
    return [per_call] * full + ([rest] if rest else [])


def encode_calls(state: ProviderState, req: ImageRequest
                 ) -> tuple[list[UpstreamRequest], tuple[str, ...]]:
    """Every provider request of the fan-out, built before any is sent (REJECTs raise here)."""
    adapter = state.adapter
    if adapter.render is not None:
        return [], ()
    assert adapter.encode_request is not None
    encoded = [adapter.encode_request(msgspec.structs.replace(req, n=k))
               for k in split_n(req.n, adapter.capabilities.images_per_call)]
    return encoded, encoded[0].dropped


async def render(upstream: Upstream, state: ProviderState, req: ImageRequest,
                 make: Callable[[ImageRequest], ProviderResult]) -> ProviderResult:
    """An offline provider's attempt: capped, logged and counted like an HTTP one."""
    if state.in_flight >= state.config.max_concurrency:
        raise GatewayError("upstream_busy", f"The provider '{state.name}' is at its concurrency "
                           "limit.", headers={"retry-after": "1"})
    started, outcome = time.perf_counter(), "error"
    state.in_flight += 1
    try:
        result = await asyncio.to_thread(make, req)
        outcome = "ok"
        return result
    finally:
        state.in_flight -= 1
        upstream.record(state.name, req.model, "render", 200 if outcome == "ok" else 0, outcome,
                        time.perf_counter() - started)


async def call_provider(upstream: Upstream, state: ProviderState, req: ImageRequest,
                        encoded: list[UpstreamRequest]) -> list[ProviderResult]:
    adapter = state.adapter
    if adapter.render is not None:
        return [await render(upstream, state, req, adapter.render)]
    assert adapter.decode_response is not None

    async def send(up: UpstreamRequest) -> UpstreamResponse:
        headers = {"Content-Type": up.content_type, **up.headers}
        async with upstream.attempt(state.name, req.model, up.path, data=up.body,
                                    headers=headers, method=up.method) as resp:
            body = await resp.read()
            return UpstreamResponse(status=resp.status, body=body,
                                    headers={k.lower(): v for k, v in resp.headers.items()},
                                    received_at=int(time.time()))

    async def one(up: UpstreamRequest) -> ProviderResult:
        received = await send(up)
        again = adapter.retry(req, received) if adapter.retry is not None else None
        if again is not None:  # the adapter changed the call once (OpenRouter modalities)
            received = await send(again)
        return adapter.decode_response(received)  # type: ignore[misc]

    outcomes = await asyncio.gather(*(one(up) for up in encoded), return_exceptions=True)
    results = [o for o in outcomes if isinstance(o, ProviderResult)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    for error in errors:
        if not isinstance(error, Exception):
            raise error
        if not isinstance(error, GatewayError):  # a bug, not a provider answer: keep the trace
            log.error("provider_call_failed", exc_info=error)
    if not results:
        raise errors[0]
    lost = sum(split_n(req.n, adapter.capabilities.images_per_call)[i]
               for i, o in enumerate(outcomes) if isinstance(o, BaseException))
    if lost:
        results[0].failed += lost
    return results


def transcode(data: bytes, mime: str, fmt: str | None,
              compression: int | None) -> tuple[bytes, str]:
    """Re-encodes to the asked format with Pillow when the provider made another one."""
    target = MIMES.get(fmt or "", mime)
    if target == mime and compression is None:
        return data, mime
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
            try:
                data = base64.b64decode(img.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise bad_image() from None
        else:
            try:
                data = await self.fetcher.fetch(img.url or "", "url")
            except GatewayError as exc:
                raise GatewayError("upstream_unavailable", "The provider's image could not be "
                                   "downloaded.") from exc
        found = sniff_mime(data[:16])
        if found is None:
            raise bad_image()  # a 200 carries real images only
        mime: str = found
        wanted = MIMES.get(req.output_format or "", mime)
        recompress = req.output_compression is not None and wanted in LOSSY
        if not formats_done and (wanted != mime or recompress):
            try:
                data, mime = await asyncio.to_thread(transcode, data, mime, req.output_format,
                                                     req.output_compression)
            except (OSError, ValueError, PILImage.DecompressionBombError):
                raise bad_image() from None
        if req.response_format == "url":
            name, query = await self.store.save(data, mime)
            # a stream's completed event carries b64_json always (OpenAI's schema), url beside
            b64 = base64.b64encode(data).decode() if req.stream else msgspec.UNSET
            return Image(url=f"{base_url}/v1/images/files/{name}?{query}", b64_json=b64,
                         revised_prompt=revised)
        return Image(b64_json=base64.b64encode(data).decode(), revised_prompt=revised)


def sum_usage(results: Sequence[ProviderResult]) -> Usage | None:
    usages = [r.usage for r in results if r.usage is not None]
    if not usages:
        return None
    total = Usage()
    for u in usages:
        total.input_tokens += u.input_tokens
        total.output_tokens += u.output_tokens
        total.total_tokens += u.total_tokens
        for name in ("input_tokens_details", "output_tokens_details"):
            detail = getattr(u, name)
            if detail is not msgspec.UNSET:
                merged = getattr(total, name) or {}
                merged = {} if merged is msgspec.UNSET else merged
                for k, v in detail.items():
                    merged[k] = merged.get(k, 0) + v
                setattr(total, name, merged)
        if u.generated_images is not msgspec.UNSET:
            prev = 0 if total.generated_images is msgspec.UNSET else total.generated_images
            total.generated_images = prev + u.generated_images
    return total


def json_response(body: ImagesResponse, headers: dict[str, str]) -> web.Response:
    return web.Response(body=_encode(body), content_type="application/json", headers=headers)
