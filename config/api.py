"""OpenAI Images API wire Structs: what clients send and what the gateway answers."""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

N = Annotated[int, Meta(ge=1, le=10)]
Compression = Annotated[int, Meta(ge=0, le=100)]
ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["transparent", "opaque", "auto"]
Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]
DEFAULT_MODEL = "dall-e-2"
MAX_PROMPT_CHARS = 32000  # OpenAI's limit for GPT image models, the largest any provider takes


class ImageGenerateRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Generation body; unknown fields are kept by the passthrough (it forwards the raw bytes)."""

    prompt: Annotated[str, Meta(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: str | None = None
    n: N | None = None
    size: str | None = None
    quality: Quality | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Background | None = None
    style: Literal["vivid", "natural"] | None = None
    moderation: Literal["auto", "low"] | None = None
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = None
    stream: bool | None = None
    user: str | None = None
    seed: int | None = None


class ImageEditForm(ImageGenerateRequest, kw_only=True, omit_defaults=True):
    """The text fields of a multipart edit (converted from strings with `strict=False`)."""

    input_fidelity: Literal["high", "low"] | None = None


class ImageURL(msgspec.Struct, omit_defaults=True):
    image_url: str | None = None
    file_id: str | None = None


class ImageEditJSONRequest(ImageGenerateRequest, kw_only=True, omit_defaults=True):
    """The JSON form of /v1/images/edits (`images[].image_url`, `mask.image_url`)."""

    images: Annotated[list[ImageURL], Meta(min_length=1, max_length=16)]
    mask: ImageURL | None = None
    input_fidelity: Literal["high", "low"] | None = None


class Image(msgspec.Struct, omit_defaults=True):
    b64_json: str | UnsetType = UNSET
    url: str | UnsetType = UNSET
    revised_prompt: str | UnsetType = UNSET


class Usage(msgspec.Struct):  # token counts always present; UNSET details are still omitted
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, int] | UnsetType = UNSET
    output_tokens_details: dict[str, int] | UnsetType = UNSET
    generated_images: int | UnsetType = UNSET


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
