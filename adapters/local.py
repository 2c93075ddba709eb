"""The offline `local` provider: deterministic Pillow images from the prompt, real masked edits,
answers shaped like gpt-image-1's (usage, size, quality, background, output_format; partial
renders when streamed), and routes that act as test doubles (latency_s, fail)."""
from __future__ import annotations

import base64
import colorsys
import hashlib
import io
import math
import random
import textwrap
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

from imagegate.adapters.base import (
    Adapter,
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ProviderResult,
    parse_size,
    status_error,
)
from imagegate.config.api import Usage
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage, image_size
from imagegate.config.schema import Fault, Route
from PIL import Image, ImageDraw, ImageFont, ImageOps

CAPABILITIES = Capabilities(
    generate=True, edit=True, mask=True, images_per_call=10, max_input_images=16, formats=True,
    partial_images=True,
)
FORMATS: dict[str, tuple[str, str]] = {  # output_format -> (Pillow format, mime)
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
# What the proxy sniffs; also keeps Pillow's riskier openers (EPS runs Ghostscript) out of reach.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
DEFAULT_SIZE = (1024, 1024)
MAX_SIDE = 4096
MAX_INPUT_PIXELS = 64_000_000  # decompression-bomb guard, checked from the header before decoding
# Without output_compression, jpeg/webp use quality 95: Pillow's advised maximum (100 turns off
# JPEG quantisation and balloons files). An explicit value is used as is; PNG is lossless and
# ignores it, as OpenAI does.
DEFAULT_QUALITY = 95
EDIT_OPACITY = 0.6  # how strongly the prompt's art covers the edited area
MAX_PROMPT_CHARS = 400
MAX_TEXT_LINES = 3
_EDITABLE = [255] + [0] * 255  # point() table: mask alpha 0 -> edit (255), anything else -> keep


class RenderStopped(Exception):
    """The request was cancelled: the render stopped before its next image."""


def _until(images: Iterator[Image.Image], stopped: Callable[[], bool]) -> Iterator[Image.Image]:
    for image in images:
        yield image
        if stopped():
            raise RenderStopped


def render(req: ImageRequest, stopped: Callable[[], bool] = lambda: False) -> ProviderResult:
    fmt = req.output_format or "png"
    if fmt not in FORMATS:
        raise GatewayError("invalid_value", "output_format must be png, jpeg or webp.",
                           param="output_format")
    transparent = req.background == "transparent"
    if transparent and fmt == "jpeg":
        raise GatewayError("invalid_value", "A transparent background needs png or webp output.",
                           param="background")
    size = _target_size(req.size)
    images = _edits(req, size, transparent) if req.operation == "edit" else (
        _art(size or DEFAULT_SIZE, _rng(req, i, ()), req.prompt, transparent=transparent)
        for i in range(req.n)
    )
    partials = (req.partial_images or 0) if req.stream else 0
    made: list[GeneratedImage] = []
    side = size or DEFAULT_SIZE
    for im in _until(iter(images), stopped):  # one by one: never all n held decoded at once
        side = im.size
        made.append(_encode(im, fmt, req.output_compression, partials))
    inputs = [_decode_size(x.data) for x in req.images]
    return ProviderResult(
        images=made, created=0, usage=_usage(req, side, len(made), inputs),
        size=_reported_size(side), quality=_quality(req.quality),
        background="transparent" if transparent else "opaque", output_format=fmt)


def _target_size(size: str | None) -> tuple[int, int] | None:
    """None means `auto`: 1024x1024 for generations, the input's size for edits."""
    if size is None or size == "auto":
        return None
    parsed = parse_size(size)
    if parsed is None or max(parsed) > MAX_SIDE:
        raise GatewayError("invalid_value", f"size must be WxH with each side 1..{MAX_SIDE}, or "
                           "auto.", param="size")
    return parsed


def _rng(req: ImageRequest, index: int, inputs: Sequence[bytes]) -> random.Random:
    """An RNG private to (prompt, seed, image index, input digests); never global state."""
    digest = hashlib.sha256()
    for part in (req.prompt, str(req.seed), str(index)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    for item in inputs:
        digest.update(item)
    return random.Random(int.from_bytes(digest.digest(), "big"))


# --- drawing --------------------------------------------------------------------------------


def _art(size: tuple[int, int], rng: random.Random, prompt: str, *, transparent: bool,
         mode: str = "RGB") -> Image.Image:
    """Gradient (or nothing, when transparent), a few shapes and the prompt's text."""
    if transparent:
        img = Image.new("RGBA", size, (0, 0, 0, 0))
    else:
        img = _gradient(size, rng, mode)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(rng.randint(3, 6)):
        # Each shape covers at most 1/9 of the canvas, so a transparent background stays visible.
        sw, sh = w * rng.uniform(0.1, 0.33), h * rng.uniform(0.1, 0.33)
        x, y = rng.uniform(0, w - sw), rng.uniform(0, h - sh)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + sw, y + sh), fill=(*_colour(rng), 255))
    _draw_prompt(draw, size, prompt)
    return img


def _gradient(size: tuple[int, int], rng: random.Random, mode: str) -> Image.Image:
    start, end = (*_colour(rng), 255), (*_colour(rng), 255)
    kind = rng.randrange(3)
    ramp = Image.radial_gradient("L") if kind == 2 else Image.linear_gradient("L")
    if kind == 1:
        ramp = ramp.transpose(Image.Transpose.ROTATE_90)
    ramp = ramp.resize(size, Image.Resampling.BILINEAR)
    return Image.composite(Image.new(mode, size, end), Image.new(mode, size, start), ramp)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.0))
    return (int(rgb[0] * 255), int(rgb[1] * 255), int(rgb[2] * 255))


@lru_cache(maxsize=64)
def _font(px: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, float]:
    font = ImageFont.load_default(size=px)
    sample = "abcdefghijklmnopqrstuvwxyz"
    return font, (font.getlength(sample) / len(sample)) or 1.0


def _draw_prompt(draw: ImageDraw.ImageDraw, size: tuple[int, int], prompt: str) -> None:
    w, h = size
    if min(w, h) < 32:
        return
    px = max(10, min(h // 18, 64))
    font, char_width = _font(px)
    # Lone surrogates cannot be drawn: they become "?".
    text = prompt[:MAX_PROMPT_CHARS].encode("utf-8", "replace").decode("utf-8")
    lines = textwrap.wrap(text, width=max(1, int(w * 0.9 / char_width)))
    if len(lines) > MAX_TEXT_LINES:
        lines = lines[:MAX_TEXT_LINES]
        lines[-1] = lines[-1][: max(1, len(lines[-1]) - 3)] + "..."
    margin = max(2, w // 40)
    draw.multiline_text((margin, h - margin), "\n".join(lines), font=font, anchor="ld",
                        fill=(255, 255, 255, 255), stroke_width=max(1, px // 12),
                        stroke_fill=(0, 0, 0, 255))


# --- edits ----------------------------------------------------------------------------------


def _edits(req: ImageRequest, size: tuple[int, int] | None,
           transparent: bool) -> Iterator[Image.Image]:
    """The first input is edited; later inputs are pasted as thumbnails (a row along the top)
    into the prompt's art, so they show inside the edited area. All inputs seed the RNG."""
    if not req.images:
        raise GatewayError("invalid_value", "An edit needs an input image.", param="image")
    base = _decode(req.images[0].data, "image")
    if transparent and base.mode != "RGBA":
        base = base.convert("RGBA")
    region = _edit_region(req.mask, base.size) if req.mask is not None else None
    thumbs = _thumbnails(req.images[1:], base.size)
    inputs = [hashlib.sha256(x.data).digest() for x in req.images]
    if req.mask is not None:
        inputs.append(hashlib.sha256(req.mask.data).digest())
    for i in range(req.n):
        art = _art(base.size, _rng(req, i, inputs), req.prompt, transparent=transparent,
                   mode=base.mode)
        for k, thumb in enumerate(thumbs):
            art.paste(thumb, (k * thumb.width, 0), thumb)
        edited = Image.blend(base, art, EDIT_OPACITY)
        if transparent:  # the art's empty background cuts the input out
            edited.putalpha(art.getchannel("A"))
        out = edited if region is None else Image.composite(edited, base, region)
        if size is not None and size != out.size:
            out = out.resize(size, Image.Resampling.LANCZOS)
        yield out


def _edit_region(mask: InputImage, size: tuple[int, int]) -> Image.Image:
    """An L image, 255 where the mask is fully transparent (the area to edit), else 0."""
    img = _decode(mask.data, "mask")
    if img.mode != "RGBA":
        raise GatewayError("invalid_value", "The mask must have an alpha channel; its fully "
                           "transparent pixels mark the area to edit.", param="mask")
    alpha = img.getchannel("A")
    if alpha.size != size:
        alpha = alpha.resize(size, Image.Resampling.NEAREST)
    return alpha.point(_EDITABLE)


def _thumbnails(images: Sequence[InputImage], size: tuple[int, int]) -> list[Image.Image]:
    side = max(1, min(size) // max(4, len(images)))
    thumbs = []
    for image in images:  # one full-size decode alive at a time
        img = _decode(image.data, "image", draft=(side, side))
        img.thumbnail((side, side))
        thumbs.append(img.convert("RGBA"))
    return thumbs


def _decode(data: bytes, param: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Untrusted bytes -> an RGB or RGBA image, or a 400 naming `param`."""
    bad = GatewayError("invalid_value", f"The {param} could not be decoded as PNG, JPEG, WebP "
                       "or GIF.", param=param)
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_INPUT_PIXELS:  # before Pillow opens it
        raise GatewayError("invalid_value", f"The {param} is larger than "
                           f"{MAX_INPUT_PIXELS // 1_000_000} megapixels.", param=param)
    try:
        img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Exception as exc:  # Pillow raises many types on malformed input
        raise bad from exc
    if img.width * img.height > MAX_INPUT_PIXELS:
        raise GatewayError("invalid_value", f"The {param} is larger than "
                           f"{MAX_INPUT_PIXELS // 1_000_000} megapixels.", param=param)
    try:
        if draft is not None:
            img.draft(None, draft)  # JPEG decodes straight to a smaller scale
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # edit what the user sees, upright
        return img.convert("RGBA" if img.has_transparency_data else "RGB")
    except Exception as exc:
        raise bad from exc


# --- output ---------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, compression: int | None,
            partials: int = 0) -> GeneratedImage:
    """The image in its format; with `partials`, that many coarser renders of it first (blocks
    of 2^(k+2) pixels down to 8, as a progressive UI would show them arrive)."""
    coarse = [_encode_one(_pixelate(img, 2 ** (partials - k + 2)), fmt, compression)
              for k in range(partials)]
    final = _encode_one(img, fmt, compression)
    return GeneratedImage(b64_json=final, mime=FORMATS[fmt][1], partials=coarse or None)


def _pixelate(img: Image.Image, block: int) -> Image.Image:
    w, h = img.size
    small = img.resize((max(1, w // block), max(1, h // block)), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _encode_one(img: Image.Image, fmt: str, compression: int | None) -> str:
    pil_format, _ = FORMATS[fmt]
    options: dict[str, object] = {}
    if fmt != "png":
        options["quality"] = DEFAULT_QUALITY if compression is None else compression
    if icc := img.info.get("icc_profile"):
        options["icc_profile"] = icc
    img.info = {}  # only the colour profile survives: no EXIF/GPS, text chunks or stale tRNS
    if fmt == "jpeg" and img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, pil_format, **options)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- answers shaped like gpt-image-1's ------------------------------------------------------

# gpt-image-1's output tokens for a 1024x1024 image by quality (OpenAI's pricing table); other
# sizes scale with their pixels. `auto` is reported as what it stood for: high.
OUTPUT_TOKENS_1024 = {"low": 272, "medium": 1056, "high": 4160}


SCHEMA_SIZES = ("1024x1024", "1024x1536", "1536x1024")  # what OpenAI's answer schema allows


def _reported_size(side: tuple[int, int]) -> str | None:
    """The answer's `size`: only one of the schema's values (other sizes leave it out)."""
    size = f"{side[0]}x{side[1]}"
    return size if size in SCHEMA_SIZES else None


def _quality(asked: str | None) -> str:
    return asked if asked in OUTPUT_TOKENS_1024 else "high"


def _usage(req: ImageRequest, size: tuple[int, int], images: int,
           inputs: Sequence[tuple[int, int]]) -> Usage:
    """Token counts as gpt-image-1 would report them (estimates: text ~4 characters a token,
    an input image 65 + 129 per 512-pixel tile)."""
    text = max(1, math.ceil(len(req.prompt) / 4))
    image_in = sum(65 + 129 * math.ceil(w / 512) * math.ceil(h / 512) for w, h in inputs)
    per_image = round(OUTPUT_TOKENS_1024[_quality(req.quality)] * size[0] * size[1] / 1024 ** 2)
    out = max(1, per_image) * images
    return Usage(input_tokens=text + image_in, output_tokens=out,
                 total_tokens=text + image_in + out,
                 input_tokens_details={"text_tokens": text, "image_tokens": image_in},
                 output_tokens_details={"image_tokens": out, "text_tokens": 0})


def _decode_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as img:
            return img.size
    except Exception:  # undecodable inputs were refused before; count them as one tile
        return (512, 512)


# --- routes as test doubles -----------------------------------------------------------------


class TestDouble:
    """A `local` route's latency_s and fail: its attempts wait, and some fail on purpose.
    Deterministic: `every: N` counts this route's attempts; `rate: p` draws from `seed`."""

    __test__ = False  # not a pytest class

    def __init__(self, route: Route) -> None:
        self.latency_s = route.latency_s
        self.plan = route.fail
        seed = route.fail.seed if route.fail is not None else 0
        self._faults, self._waits = random.Random(seed), random.Random(seed + 1)
        self.attempts = 0

    def latency(self) -> float:
        if isinstance(self.latency_s, list):
            low, high = self.latency_s
            return self._waits.uniform(low, high)
        return self.latency_s or 0.0

    def fault(self) -> Fault | None:
        """The fault this attempt has, if any."""
        self.attempts += 1
        plan = self.plan
        if plan is None:
            return None
        if plan.every is not None:
            return plan if self.attempts % plan.every == 0 else None
        return plan if self._faults.random() < (plan.rate or 0.0) else None


def fault_error(fault: Fault, provider: str) -> tuple[int, str, GatewayError]:
    """(HTTP status, attempt outcome, error) of a fault: what the same failure from a real
    provider answers, so fallback, rests and metrics treat it alike."""
    kind = fault.with_
    if kind == "upstream_rate_limited":
        wait = str(max(1, math.ceil(fault.retry_after_s)))
        return 429, "rate_limited", status_error(429, "", retry_after=wait)
    if kind == "upstream_unavailable":
        error = status_error(503, "")
        error.message = f"The provider '{provider}' failed (HTTP 503)."
        return 503, "server_error", error
    if kind == "upstream_timeout":
        return 0, "timeout", GatewayError("upstream_timeout",
                                          f"The provider '{provider}' timed out.")
    if kind == "content_policy_violation":
        return 400, "client_error", GatewayError(
            "content_policy_violation", "The request was rejected by the provider's safety "
            "system.", param="prompt")
    return 200, "ok", GatewayError("no_image", "The provider answered without an image.")


ADAPTER = Adapter(type="local", capabilities=CAPABILITIES, render=render)
