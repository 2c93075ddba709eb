"""Google Gemini image models: OpenAI images <-> POST {base_url}/models/{model}:generateContent."""
from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Final

import msgspec
from imagegate.adapters.aspect import image_shape, profile_of
from imagegate.adapters.base import (
    DROP,
    REJECT,
    Adapter,
    Capabilities,
    GeneratedImage,
    ImageRequest,
    Policy,
    ProviderResult,
    UpstreamRequest,
    UpstreamResponse,
    accept,
    safe_message,
    status_error,
)
from imagegate.adapters.gemini_wire import (
    GeminiBlob,
    GeminiCandidate,
    GeminiContent,
    GeminiError,
    GeminiErrorEnvelope,
    GeminiGenerationConfig,
    GeminiImageConfig,
    GeminiModalityCount,
    GeminiPart,
    GeminiRequest,
    GeminiResponse,
    GeminiUsage,
)
from imagegate.config.api import Usage
from imagegate.config.errors import GatewayError
from msgspec import UNSET

CAPABILITIES = Capabilities(generate=True, edit=True, mask=False, images_per_call=1)
POLICY: dict[str, Policy] = {
    "mask": REJECT,  # no mask input: editing the whole image would silently differ
    "background": DROP, "style": DROP, "moderation": DROP,
    "seed": DROP, "input_fidelity": DROP, "user": DROP,
}
# finishReason values of a candidate the safety system stopped; other no-image reasons
# (NO_IMAGE, IMAGE_OTHER, OTHER, MAX_TOKENS, a text-only STOP) are `no_image`.
SAFETY_FINISH: Final = frozenset({
    "SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
    "SPII", "RECITATION", "IMAGE_RECITATION",
})
AUTH: Final = "The provider rejected the gateway's credentials."  # its text can echo the key
# google.rpc status -> (gateway code, message); "" relays Google's message made safe. Statuses
# not listed here go by the HTTP status.
STATUSES: Final[Mapping[str, tuple[str, str]]] = {
    "UNAUTHENTICATED": ("upstream_auth_failed", AUTH),
    "PERMISSION_DENIED": ("upstream_auth_failed", AUTH),
    "RESOURCE_EXHAUSTED": ("upstream_rate_limited", "The provider is rate limiting requests."),
    # The config, not the client, chose the model id: a fallback route may still serve it.
    "NOT_FOUND": ("upstream_unavailable", "The provider does not offer this model."),
    "DEADLINE_EXCEEDED": ("upstream_timeout", "The provider timed out."),
    "INVALID_ARGUMENT": ("invalid_value", ""),
    # e.g. "User location is not supported": the gateway's account, not the client, is at fault
    "FAILED_PRECONDITION": ("upstream_unavailable", "The provider refused the gateway's account "
                            "here (FAILED_PRECONDITION)."),
    "UNAVAILABLE": ("upstream_unavailable", "The provider is unavailable."),
    "INTERNAL": ("upstream_unavailable", "The provider failed."),
}
MODALITIES: Final[Mapping[str, str]] = {"IMAGE": "image_tokens", "TEXT": "text_tokens"}
_DELAY = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,9}))?s")
_ENUM = re.compile(r"[A-Z_]{1,64}")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(GeminiResponse).decode
_decode_error = msgspec.json.Decoder(GeminiErrorEnvelope).decode


def auth_headers(api_key: str) -> dict[str, str]:
    return {"x-goog-api-key": api_key}


def encode_request(req: ImageRequest) -> UpstreamRequest:
    req, dropped = accept(req, POLICY)
    # Gemini 3 takes imageSize (512 on 3.1 Flash, 1K/2K/4K); Gemini 2.5 has none: its shape
    # has no tier, and a size that is not ~1 MP is named dropped
    shape = image_shape(req.size, req.quality, profile_of(req.model))
    parts = [GeminiPart(text=req.prompt)]
    parts += [GeminiPart(inline_data=GeminiBlob(image.mime, base64.b64encode(image.data).decode()))
              for image in req.images]
    config = GeminiGenerationConfig(
        response_modalities=["IMAGE"] if req.image_only else ["TEXT", "IMAGE"],
        image_config=GeminiImageConfig(aspect_ratio=shape.aspect_ratio or UNSET,
                                       image_size=shape.image_size or UNSET)
        if shape.aspect_ratio or shape.image_size else UNSET,
    )
    body = GeminiRequest(contents=[GeminiContent(parts)], generation_config=config)
    model = req.model.removeprefix("models/")  # the SDKs' resource-name form works too
    return UpstreamRequest(path=f"/models/{model}:generateContent", body=_encode(body),
                           dropped=dropped + shape.dropped)


def retry_after(err: GeminiError, headers: Mapping[str, str]) -> str | None:
    """Whole seconds from RetryInfo's `retryDelay` ("1.5s" -> "2"), else the header."""
    for detail in err.details:
        match = _DELAY.fullmatch(detail.retry_delay or "")
        if match:
            whole, fraction = int(match.group(1)), int(match.group(2) or 0)
            return str(whole + (1 if fraction else 0))
    return headers.get("retry-after")


def map_error(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """A Google error answer -> the gateway's error (auth text is never relayed)."""
    try:
        err = _decode_error(body).error or GeminiError()
    except (msgspec.DecodeError, msgspec.ValidationError):
        err = GeminiError()  # not Google's JSON (an HTML page): the status is all we know
    if any(detail.reason == "API_KEY_INVALID" for detail in err.details):
        return GatewayError("upstream_auth_failed", AUTH)  # Google sends a bad key as a 400
    if err.status not in STATUSES:
        return status_error(status, "" if status >= 429 else safe_message(err.message),
                            retry_after=headers.get("retry-after"))
    code, message = STATUSES[err.status]
    if code == "invalid_value":
        message = safe_message(err.message) or "The provider rejected the request."
    wait = retry_after(err, headers) if code in ("upstream_rate_limited",
                                                 "upstream_unavailable") else None
    return GatewayError(code, message, headers={"retry-after": wait} if wait else None)


def _enum(value: str | None) -> str:
    """An upstream enum fit for a message: Google's upper-case names only."""
    return value if value and _ENUM.fullmatch(value) else "unspecified"


def candidate_image(candidate: GeminiCandidate) -> GeneratedImage | None:
    """The last non-thought image; the candidate's non-thought text becomes revised_prompt."""
    parts = [part for part in (candidate.content.parts if candidate.content else [])
             if not part.thought]
    blobs = [part.inline_data for part in parts if part.inline_data and part.inline_data.data]
    if not blobs:
        return None
    # Gemini's text beside the image is its own account of what it drew ("Here is a fox
    # in the snow…"): the nearest thing to OpenAI's revised_prompt, so it is passed on.
    text = " ".join(part.text.strip() for part in parts if part.text and part.text.strip())
    return GeneratedImage(b64_json=blobs[-1].data, mime=blobs[-1].mime_type,
                          revised_prompt=text or None)


def no_image(parsed: GeminiResponse) -> GatewayError:
    """Why a 200 answer holds no image: a blocked prompt, a safety stop, or nothing at all."""
    block = parsed.prompt_feedback.block_reason if parsed.prompt_feedback else None
    if block:
        return GatewayError("content_policy_violation",
                            f"The provider blocked the prompt ({_enum(block)}).")
    reasons = [_enum(c.finish_reason) for c in parsed.candidates]
    safety = [reason for reason in reasons if reason in SAFETY_FINISH]
    if safety:
        return GatewayError("content_policy_violation",
                            f"The provider's safety system blocked the image ({safety[0]}).")
    detail = ", ".join(reasons) if reasons else "no candidates"
    return GatewayError("no_image", f"The model answered without an image ({detail}).")


def _by_modality(counts: list[GeminiModalityCount] | None) -> dict[str, int]:
    sums = dict.fromkeys(MODALITIES.values(), 0)  # zeros where Google reports no breakdown
    if counts is None:
        return sums
    for count in counts:
        if count.modality in MODALITIES:
            sums[MODALITIES[count.modality]] += count.token_count
    return sums


def usage_of(meta: GeminiUsage | None) -> Usage | None:
    if meta is None:
        return None
    # Thinking is billed as output, and so input + output adds up to totalTokenCount.
    return Usage(input_tokens=meta.prompt_token_count,
                 output_tokens=meta.candidates_token_count + meta.thoughts_token_count,
                 total_tokens=meta.total_token_count,
                 input_tokens_details=_by_modality(meta.prompt_tokens_details),
                 output_tokens_details=_by_modality(meta.candidates_tokens_details))


def decode_response(resp: UpstreamResponse) -> ProviderResult:
    if resp.status >= 400:
        raise map_error(resp.status, resp.body, resp.headers)
    try:
        parsed = _decode(resp.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise GatewayError("upstream_unavailable", "The provider sent an unreadable answer.") \
            from exc
    found = [candidate_image(candidate) for candidate in parsed.candidates]
    images = [image for image in found if image is not None]
    if not images:
        raise no_image(parsed)
    return ProviderResult(images=images, created=resp.received_at,
                          usage=usage_of(parsed.usage_metadata), failed=len(found) - len(images))


ADAPTER = Adapter(type="gemini", capabilities=CAPABILITIES, encode_request=encode_request,
                  decode_response=decode_response, auth_headers=auth_headers, policy=POLICY)
