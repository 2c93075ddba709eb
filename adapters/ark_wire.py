"""Volcengine Ark wire Structs (request, lenient answer views) and the model-family record."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec
from msgspec import UNSET, UnsetType


class ArkImageRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    prompt: str
    image: str | list[str] | UnsetType = UNSET  # data URLs; a bare string for one image
    size: str | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    output_format: str | UnsetType = UNSET  # Seedream 5.0 only: png | jpeg (4.x answer JPEG)
    # Required (no default) so omit_defaults always sends them: Ark's own defaults are `url`
    # and watermark=true. b64 saves the proxy a download, and it hosts images for url clients.
    response_format: str
    watermark: bool


class ArkError(msgspec.Struct):
    code: str = ""
    message: str = ""
    param: str | None = None


class ArkImage(msgspec.Struct):
    b64_json: str | None = None
    url: str | None = None
    size: str | None = None
    error: ArkError | None = None  # a failed member of an image set, beside good ones


class ArkUsage(msgspec.Struct):
    generated_images: int | None = None
    output_tokens: int = 0
    total_tokens: int = 0


class ArkImagesResponse(msgspec.Struct):
    created: int | None = None
    created_at: int | None = None  # the SDK's name; docs and captures say `created`
    data: list[ArkImage] = []
    usage: ArkUsage | None = None
    error: ArkError | None = None


class ArkErrorEnvelope(msgspec.Struct):
    error: ArkError | None = None


@dataclass(frozen=True)
class Family:
    """What one Ark model family accepts."""

    name: str
    default_size: str
    named_sizes: Mapping[str, str]  # `1K`-style sizes -> what is sent
    fit: Callable[[int, int], tuple[int, int]] | None  # None: WxH is never sent (SeedEdit)
    seed: bool
    images: tuple[int, int]  # allowed input image count, inclusive
    substitutes: Mapping[str, str] = field(default_factory=dict)  # tiers it lacks (named)
    formats: frozenset[str] = frozenset()  # output_format values the model makes itself
