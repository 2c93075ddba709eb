"""OpenAI Images API wire Structs: what clients send and what the gateway answers."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Final

import msgspec
from msgspec import UNSET, Meta, UnsetType

N = Annotated[int, Meta(ge=1, le=10)]
Compression = Annotated[int, Meta(ge=0, le=100)]
# Enumerated fields are plain strings: OpenAI adds values (quality `xhigh`/`max` came with
# gpt-image-2) and a passthrough gateway must not refuse what the upstream accepts. OpenAI
# routes forward any string (OpenAI validates it); adapters map the values known here and
# name the others in x-imagegate-dropped-params.
KNOWN_VALUES: Final[Mapping[str, frozenset[str]]] = {
    "quality": frozenset({"auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"}),
    "response_format": frozenset({"url", "b64_json"}),
    "output_format": frozenset({"png", "jpeg", "webp"}),
    "background": frozenset({"transparent", "opaque", "auto"}),
    "style": frozenset({"vivid", "natural"}),
    "moderation": frozenset({"auto", "low"}),
    "input_fidelity": frozenset({"high", "low"}),
}
Enum = Annotated[str, Meta(min_length=1, max_length=64)]
DEFAULT_MODEL = "dall-e-2"
MAX_PROMPT_CHARS = 32000  # OpenAI's limit for GPT image models, the largest any provider takes


class ImageGenerateRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Generation body; unknown fields are kept by the passthrough (it forwards the raw bytes)."""

    prompt: Annotated[str, Meta(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: str | None = None
    n: N | None = None
    size: str | None = None
    quality: Enum | None = None
    response_format: Enum | None = None
    output_format: Enum | None = None
    output_compression: Compression | None = None
    background: Enum | None = None
    style: Enum | None = None
    moderation: Enum | None = None
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = None
    stream: bool | None = None
    user: str | None = None
    seed: int | None = None


class ImageEditForm(ImageGenerateRequest, kw_only=True, omit_defaults=True):
    """The text fields of a multipart edit (converted from strings with `strict=False`)."""

    input_fidelity: Enum | None = None


class ImageURL(msgspec.Struct, omit_defaults=True):
    image_url: str | None = None
    file_id: str | None = None


class ImageEditJSONRequest(ImageGenerateRequest, kw_only=True, omit_defaults=True):
    """The JSON form of /v1/images/edits (`images[].image_url`, `mask.image_url`)."""

    images: Annotated[list[ImageURL], Meta(min_length=1, max_length=16)]
    mask: ImageURL | None = None
    input_fidelity: Enum | None = None


class Image(msgspec.Struct, omit_defaults=True):
    b64_json: str | UnsetType = UNSET
    url: str | UnsetType = UNSET
    revised_prompt: str | UnsetType = UNSET


def _no_input_details() -> dict[str, int]:
    return {"text_tokens": 0, "image_tokens": 0}


class Usage(msgspec.Struct):
    """OpenAI's ImagesUsage: every required field always present (zeros where a provider does
    not report a part); output_tokens_details, when set, has image_tokens and text_tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, int] = msgspec.field(default_factory=_no_input_details)
    output_tokens_details: dict[str, int] | UnsetType = UNSET
    generated_images: int | UnsetType = UNSET  # Ark's count, an extra beside the required


class ImagesResponse(msgspec.Struct, omit_defaults=True):
    created: int
    data: list[Image]
    usage: Usage | UnsetType = UNSET
    background: str | UnsetType = UNSET
    output_format: str | UnsetType = UNSET
    quality: str | UnsetType = UNSET
    size: str | UnsetType = UNSET


class ImageStreamEvent(msgspec.Struct, omit_defaults=True):
    type: str
    b64_json: str | UnsetType = UNSET
    url: str | UnsetType = UNSET
    created_at: int = 0
    size: str | UnsetType = UNSET
    quality: str | UnsetType = UNSET
    background: str | UnsetType = UNSET
    output_format: str | UnsetType = UNSET
    usage: Usage | UnsetType = UNSET
    partial_image_index: int | UnsetType = UNSET


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class Model(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "imagegate"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"
