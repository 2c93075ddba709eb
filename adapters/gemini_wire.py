"""Gemini generateContent wire Structs: the camelCase request and lenient answer/error views."""
from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType


class GeminiBlob(msgspec.Struct, rename="camel"):
    mime_type: str
    data: str  # raw base64, no `data:` prefix


class GeminiPart(msgspec.Struct, omit_defaults=True, rename="camel"):
    text: str | UnsetType = UNSET
    inline_data: GeminiBlob | UnsetType = UNSET


class GeminiContent(msgspec.Struct):
    parts: list[GeminiPart]
    role: str = "user"


class GeminiImageConfig(msgspec.Struct, omit_defaults=True, rename="camel"):
    aspect_ratio: str | UnsetType = UNSET
    image_size: str | UnsetType = UNSET


class GeminiGenerationConfig(msgspec.Struct, omit_defaults=True, rename="camel"):
    response_modalities: list[str]
    image_config: GeminiImageConfig | UnsetType = UNSET


class GeminiRequest(msgspec.Struct, rename="camel"):
    contents: list[GeminiContent]
    generation_config: GeminiGenerationConfig


class GeminiBlobView(msgspec.Struct, rename="camel"):
    mime_type: str | None = None
    data: str = ""


class GeminiPartView(msgspec.Struct, rename="camel"):
    text: str | None = None
    inline_data: GeminiBlobView | None = None
    thought: bool = False  # Gemini 3 interim images and reasoning text


class GeminiContentView(msgspec.Struct):
    parts: list[GeminiPartView] = []


class GeminiCandidate(msgspec.Struct, rename="camel"):
    content: GeminiContentView | None = None  # absent on some IMAGE_SAFETY answers
    finish_reason: str | None = None


class GeminiPromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class GeminiModalityCount(msgspec.Struct, rename="camel"):
    modality: str = ""
    token_count: int = 0


class GeminiUsage(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    total_token_count: int = 0
    prompt_tokens_details: list[GeminiModalityCount] | None = None
    candidates_tokens_details: list[GeminiModalityCount] | None = None


class GeminiResponse(msgspec.Struct, rename="camel"):
    candidates: list[GeminiCandidate] = []
    prompt_feedback: GeminiPromptFeedback | None = None
    usage_metadata: GeminiUsage | None = None


class GeminiErrorDetail(msgspec.Struct):
    type: str = msgspec.field(default="", name="@type")
    reason: str | None = None  # google.rpc.ErrorInfo
    retry_delay: str | None = msgspec.field(default=None, name="retryDelay")  # RetryInfo


class GeminiError(msgspec.Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[GeminiErrorDetail] = []


class GeminiErrorEnvelope(msgspec.Struct):
    error: GeminiError | None = None
