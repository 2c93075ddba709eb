"""OpenAI size/quality -> aspect ratio + resolution tier, shared by OpenRouter and Gemini.

Google's tiers are total-pixel levels (1K ~ 1 MP, 2K ~ 4 MP, 4K ~ 16 MP at any ratio: 16:9 1K is
1376x768, 2K 2752x1536), so an asked size picks the tier nearest in total pixels, compared on a
log scale (the 1K/2K boundary is ~2.1 MP): 1792x1024 (1.8 MP) is 1K, not 2K's 2.3x the pixels.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from imagegate.adapters.base import ASPECT_RATIOS, nearest_ratio, parse_size
from imagegate.config.errors import GatewayError

# Total pixels of each tier (the 1:1 image); "512" is Gemini 3.1 Flash's smallest.
TIER_PIXELS: Final[Mapping[str, int]] = {
    "512": 512 * 512, "1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 4096 * 4096,
}
# Named sizes a client may send (Seedream-style `defaults: {size: 2K}`), in total pixels.
NAMED_PIXELS: Final[Mapping[str, int]] = {
    "1K": 1024 * 1024, "2K": 2048 * 2048, "3K": 3072 * 3072, "4K": 4096 * 4096,
}
EXTENDED_RATIOS: Final = ("1:4", "4:1", "1:8", "8:1")


@dataclass(frozen=True)
class Profile:
    """What one image model takes: its aspect ratios and tiers (none: a fixed ~1 MP image,
    and no image size is sent)."""

    name: str
    ratios: tuple[str, ...] = ASPECT_RATIOS
    tiers: tuple[str, ...] = ("1K", "2K", "4K")


GEMINI_31_FLASH = Profile("Gemini 3.1 Flash Image", ASPECT_RATIOS + EXTENDED_RATIOS,
                          ("512", "1K", "2K", "4K"))
GEMINI_3 = Profile("Gemini 3 image")  # gemini-3-pro-image, gemini-3.1-flash-lite-image
GEMINI_25 = Profile("Gemini 2.5 Flash Image", tiers=())  # no imageSize: always ~1024 px
OTHER = Profile("image model")  # non-Google models behind OpenRouter: image_config as documented
# First substring match wins, on the id without `google/` or `models/`.
PROFILES: Final = (("gemini-3.1-flash-image", GEMINI_31_FLASH), ("gemini-3", GEMINI_3),
                   ("gemini-2", GEMINI_25))


def profile_of(model: str) -> Profile:
    bare = model.lower().removeprefix("models/").removeprefix("google/")
    return next((profile for key, profile in PROFILES if key in bare), OTHER)


# Every OpenAI size, written out so the golden files can name each row: (ratio, tier) on a
# model with the standard ratios and 1K/2K/4K. Other sizes are computed the same way.
SIZES: Final[Mapping[str, tuple[str, str]]] = {
    "256x256": ("1:1", "1K"),
    "512x512": ("1:1", "1K"),
    "1024x1024": ("1:1", "1K"),
    "1536x1024": ("3:2", "1K"),
    "1024x1536": ("2:3", "1K"),
    "1792x1024": ("16:9", "1K"),  # 1.8 MP: nearer 1K's ~1 MP than 2K's ~4 MP
    "1024x1792": ("9:16", "1K"),
}
# Used only when size is absent or `auto`: an explicit size already fixes the tier, so a
# quality beside it is dropped (and named) rather than silently overriding the size.
QUALITY: Final[Mapping[str, str]] = {
    "max": "4K", "xhigh": "4K", "high": "2K", "hd": "2K", "medium": "1K", "standard": "1K",
    "low": "1K",
}
# A WxH further than 5% from every supported ratio comes out visibly different: name `size`.
RATIO_TOLERANCE: Final = math.log(1.05)


class Shape(NamedTuple):
    aspect_ratio: str | None  # None: leave the provider's default (1:1)
    image_size: str | None  # a TIER_PIXELS name; None: send none (the provider's default)
    dropped: tuple[str, ...]


def _ratio_error(width: int, height: int, ratio: str) -> float:
    a, b = ratio.split(":")
    return abs(math.log(width / height) - math.log(int(a) / int(b)))


def nearest_tier(pixels: int, tiers: Sequence[str]) -> str:
    """The tier nearest in total pixels (log scale); ties go to the smaller tier."""
    return min(tiers, key=lambda tier: abs(math.log(TIER_PIXELS[tier] / pixels)))


def _asked(size: str, ratios: Sequence[str]) -> tuple[str | None, int, bool]:
    """(ratio, total pixels, ratio approximated) of a non-auto size; invalid sizes refused."""
    if size.upper() in NAMED_PIXELS:
        return None, NAMED_PIXELS[size.upper()], False
    parsed = parse_size(size)
    if parsed is None:
        raise GatewayError("invalid_value", f"The size {size!r} is not valid: use WxH, auto, "
                                            "1K, 2K or 4K.", param="size")
    ratio = nearest_ratio(*parsed, ratios)
    return ratio, parsed[0] * parsed[1], _ratio_error(*parsed, ratio) > RATIO_TOLERANCE


def _quality_tier(quality: str | None, profile: Profile) -> Shape:
    tier = QUALITY.get(quality or "")
    if tier is None:
        return Shape(None, None, ())
    if not profile.tiers:  # one fixed resolution: quality cannot change it
        return Shape(None, None, () if tier == "1K" else ("quality",))
    fitted = nearest_tier(TIER_PIXELS[tier], profile.tiers)
    return Shape(None, fitted, () if fitted == tier else ("quality",))


def image_shape(size: str | None, quality: str | None, profile: Profile = OTHER) -> Shape:
    """The provider's aspect ratio and tier for an OpenAI size and quality on one model."""
    if size is None or size == "auto":
        return _quality_tier(quality, profile)
    ratio, pixels, approximated = _asked(size, profile.ratios)
    # the tier the client asked for: a named one as named (3K has no match), else the nearest
    asked = size.upper() if size.upper() in NAMED_PIXELS else nearest_tier(pixels,
                                                                           tuple(TIER_PIXELS))
    made = nearest_tier(pixels, profile.tiers) if profile.tiers else "1K"
    dropped = ("size",) if approximated or made != asked else ()
    wants_quality = quality is not None and quality != "auto"
    return Shape(ratio, made if profile.tiers else None,
                 dropped + (("quality",) if wants_quality else ()))
