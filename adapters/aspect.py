"""OpenAI size/quality -> aspect ratio + 1K/2K/4K, shared by the OpenRouter and Gemini adapters."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, NamedTuple

from imagegate.adapters.base import ASPECT_RATIOS, image_size_class, nearest_ratio, parse_size
from imagegate.config.errors import GatewayError

# Every OpenAI size, written out so the golden files can name each row. Other WxH sizes are
# computed the same way: nearest supported ratio, class from the longer side (<=1536 is 1K).
SIZES: Final[Mapping[str, tuple[str, str]]] = {
    "256x256": ("1:1", "1K"),
    "512x512": ("1:1", "1K"),
    "1024x1024": ("1:1", "1K"),
    "1536x1024": ("3:2", "1K"),
    "1024x1536": ("2:3", "1K"),
    "1792x1024": ("16:9", "2K"),  # 1.75 vs 1.78: the ratio is close, the long side is over 1536
    "1024x1792": ("9:16", "2K"),
}
# Only the resolution class, no ratio: the style Seedream-like `defaults: {size: 2K}` use.
NAMED_SIZES: Final = ("1K", "2K", "4K")
# Used only when size is absent or `auto`: an explicit size already fixes the class, so a
# quality beside it is dropped (and named) rather than silently overriding the size.
QUALITY: Final[Mapping[str, str]] = {
    "high": "2K", "hd": "2K", "medium": "1K", "standard": "1K", "low": "1K",
}
# A WxH further than 5% from every supported ratio comes out visibly different: name `size`.
RATIO_TOLERANCE: Final = math.log(1.05)


class Shape(NamedTuple):
    aspect_ratio: str | None  # None: leave the provider's default (1:1)
    image_size: str | None  # None: leave the provider's default (1K)
    dropped: tuple[str, ...]


def _ratio_error(width: int, height: int, ratio: str) -> float:
    a, b = ratio.split(":")
    return abs(math.log(width / height) - math.log(int(a) / int(b)))


def _from_size(size: str) -> tuple[str | None, str, bool]:
    """(ratio, class, approximated) for a non-auto size; invalid sizes are refused."""
    if size in SIZES:
        return (*SIZES[size], False)
    if size.upper() in NAMED_SIZES:
        return None, size.upper(), False
    parsed = parse_size(size)
    if parsed is None:
        raise GatewayError("invalid_value", f"The size {size!r} is not valid: use WxH, auto, "
                                            "1K, 2K or 4K.", param="size")
    ratio = nearest_ratio(*parsed, ASPECT_RATIOS)
    return ratio, image_size_class(*parsed), _ratio_error(*parsed, ratio) > RATIO_TOLERANCE


def image_shape(size: str | None, quality: str | None) -> Shape:
    """The provider's aspect ratio and image size for an OpenAI size and quality."""
    wants_quality = quality is not None and quality != "auto"
    if size is None or size == "auto":
        return Shape(None, QUALITY.get(quality or ""), ())
    ratio, image_size, approximated = _from_size(size)
    dropped = ("size",) if approximated else ()
    return Shape(ratio, image_size, dropped + (("quality",) if wants_quality else ()))
