"""OpenRouter image models: OpenAI images <-> POST {base_url}/chat/completions with modalities."""
from __future__ import annotations

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
    bearer,
    data_url,
    safe_message,
    status_error,
)
from imagegate.config.api import Usage
from imagegate.config.errors import GatewayError
from msgspec import UNSET, UnsetType

# HTTP-Referer / X-Title attribution is the provider config's `headers:`, added by the proxy.
PATH: Final = "/chat/completions"  # generations and edits alike: image parts make an edit
CAPABILITIES = Capabilities(generate=True, edit=True, mask=False, images_per_call=1)
POLICY: dict[str, Policy] = {
    "mask": REJECT,  # no mask input: editing the whole image would silently differ
    "background": DROP, "style": DROP, "moderation": DROP,
    "seed": DROP, "input_fidelity": DROP,
}
# Models whose output is images only: asked for ["image", "text"] OpenRouter answers 404 "No
# endpoints found that support the requested output modalities: image, text".
IMAGE_ONLY_PREFIXES: Final = ("black-forest-labs/", "sourceful/", "bytedance-seed/",
                              "openai/gpt-image-", "openai/chatgpt-image")
MODALITIES_404: Final = "output modalities"
# Models found image-only at run time (that 404, then a good answer to ["image"]): asked for
# ["image"] from then on, for the process's life. Grows by at most one id per configured model.
LEARNED_IMAGE_ONLY: set[str] = set()
# OpenRouter's image_size names for the shared tiers
IMAGE_SIZES: Final[Mapping[str, str]] = {"512": "0.5K", "1K": "1K", "2K": "2K", "4K": "4K"}
# metadata.error_type values of a refusal (a 400 or 403 from the serving provider's filter)
REFUSALS: Final = frozenset({"content_policy_violation", "refusal", "moderation"})
# finish_reason / native_finish_reason values meaning a safety refusal. native_* relays the
# serving provider's own word: OpenAI-style `content_filter`, Google's enum names.
SAFETY_FINISH: Final = frozenset({
    "CONTENT_FILTER", "SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_RECITATION",
})


class OpenRouterImageURL(msgspec.Struct):
    url: str = ""


class OpenRouterTextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class OpenRouterImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: OpenRouterImageURL


class OpenRouterMessage(msgspec.Struct):
    content: list[OpenRouterTextPart | OpenRouterImagePart]
    role: str = "user"


class OpenRouterImageConfig(msgspec.Struct, omit_defaults=True):
    aspect_ratio: str | UnsetType = UNSET
    image_size: str | UnsetType = UNSET


class OpenRouterChatRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    messages: list[OpenRouterMessage]
    modalities: list[str]
    image_config: OpenRouterImageConfig | UnsetType = UNSET
    user: str | UnsetType = UNSET  # `stream` is never sent: the default (false) is what we want


class OpenRouterImage(msgspec.Struct):
    image_url: OpenRouterImageURL | None = None


class OpenRouterReply(msgspec.Struct):
    # `content` is not read: it is chat chatter ("Here is your image!"), not a revised prompt,
    # and some providers send it as a list of parts, which a `str` view would refuse.
    images: list[OpenRouterImage] | None = None


class OpenRouterChoice(msgspec.Struct):
    message: OpenRouterReply | None = None
    finish_reason: str | None = None
    native_finish_reason: str | None = None


class OpenRouterTokenDetails(msgspec.Struct):
    image_tokens: int | None = None


class OpenRouterUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: OpenRouterTokenDetails | None = None


class OpenRouterErrorMetadata(msgspec.Struct):
    reasons: list[str] | None = None  # 403 moderation; `flagged_input` is never read
    error_type: str | None = None  # e.g. content_policy_violation, refusal, region_restricted


class OpenRouterError(msgspec.Struct):
    code: int | str | None = None  # the HTTP status, also inside 200 answers
    message: str = ""
    metadata: OpenRouterErrorMetadata | None = None


class OpenRouterChatResponse(msgspec.Struct):
    created: int | None = None
    choices: list[OpenRouterChoice] = []
    usage: OpenRouterUsage | None = None
    error: OpenRouterError | None = None


class OpenRouterErrorEnvelope(msgspec.Struct):
    error: OpenRouterError | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(OpenRouterChatResponse).decode
_decode_error = msgspec.json.Decoder(OpenRouterErrorEnvelope).decode


def is_image_only(model: str) -> bool:
    """Whether OpenRouter must be asked for ["image"] alone for this model."""
    return model.lower().startswith(IMAGE_ONLY_PREFIXES) or model in LEARNED_IMAGE_ONLY


def encode_request(req: ImageRequest) -> UpstreamRequest:
    req, dropped = accept(req, POLICY)
    shape = image_shape(req.size, req.quality, profile_of(req.model))
    size = IMAGE_SIZES[shape.image_size] if shape.image_size else None
    config = OpenRouterImageConfig(aspect_ratio=shape.aspect_ratio or UNSET,
                                   image_size=size or UNSET)
    parts: list[OpenRouterTextPart | OpenRouterImagePart] = [OpenRouterTextPart(req.prompt)]
    parts += [OpenRouterImagePart(OpenRouterImageURL(data_url(image))) for image in req.images]
    image_only = req.image_only or is_image_only(req.model)
    body = OpenRouterChatRequest(
        model=req.model, messages=[OpenRouterMessage(parts)],
        modalities=["image"] if image_only else ["image", "text"],
        image_config=config if shape.aspect_ratio or size else UNSET,
        user=req.user or UNSET,
    )
    return UpstreamRequest(path=PATH, body=_encode(body), dropped=dropped + shape.dropped)


def retry(req: ImageRequest, resp: UpstreamResponse) -> UpstreamRequest | None:
    """The same call asked for ["image"] when OpenRouter says the model makes no text; the
    model is remembered as image-only. Any other answer stands."""
    if resp.status != 404 or req.image_only or is_image_only(req.model):
        return None
    try:
        err = _decode_error(resp.body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if err is None or MODALITIES_404 not in err.message.lower():
        return None
    LEARNED_IMAGE_ONLY.add(req.model)
    return encode_request(msgspec.structs.replace(req, image_only=True))


def _moderation(err: OpenRouterError) -> GatewayError:
    reasons = err.metadata.reasons if err.metadata and err.metadata.reasons else []
    detail = f" (reasons: {safe_message(', '.join(reasons), 100)})" if reasons else ""
    return GatewayError("content_policy_violation",
                        f"The provider's moderation flagged the input{detail}.")


def _forbidden(err: OpenRouterError) -> GatewayError:
    """A 403 is moderation, a guardrail block, a missing permission or region_restricted: the
    first two refuse the content; the others are the gateway's account, so another route may
    answer. The flagged input is never echoed."""
    meta = err.metadata or OpenRouterErrorMetadata()
    kind, text = (meta.error_type or "").lower(), err.message.lower()
    if meta.reasons or kind in REFUSALS or "flagged" in text:
        return _moderation(err)
    if "guardrail" in kind or "guardrail" in text or text.startswith("request blocked"):
        return GatewayError("content_policy_violation",
                            "The provider's guardrail blocked the request.")
    why = "region_restricted" if "region" in kind or "region" in text else "permission"
    return GatewayError("upstream_unavailable", "The provider refused the gateway's account "
                        f"for this model ({why}).")


def map_error(status: int, err: OpenRouterError, headers: Mapping[str, str]) -> GatewayError:
    """OpenRouter's error (HTTP or inside a 200) -> the gateway's; auth text is never relayed."""
    retry_after = headers.get("retry-after")
    kind = (err.metadata.error_type or "").lower() if err.metadata else ""
    if status == 403:
        return _forbidden(err)
    if status == 402:  # the account's credit: a billing state, another route may answer
        return GatewayError("insufficient_quota", "The provider account is out of credit "
                            "(HTTP 402).")
    if status == 404:  # the configured model id is unknown or offers no image output
        return GatewayError("upstream_unavailable", "The provider does not offer this model.")
    if status == 400 and kind in REFUSALS:
        return GatewayError("content_policy_violation",
                            "The provider refused the request for safety reasons.")
    if status == 400:
        return status_error(400, safe_message(err.message))
    # 429's text is often "Provider returned error"; metadata.raw holds the upstream body.
    return status_error(status, "", retry_after=retry_after)


def _error_of(resp: UpstreamResponse) -> GatewayError:
    try:
        err = _decode_error(resp.body).error or OpenRouterError()
    except (msgspec.DecodeError, msgspec.ValidationError):
        err = OpenRouterError()  # not OpenRouter's JSON (an HTML page): the status is all we have
    return map_error(resp.status, err, resp.headers)


def _image(url: str) -> GeneratedImage | None:
    head, sep, payload = url.partition(";base64,")
    if head.startswith("data:image/") and sep and payload:
        return GeneratedImage(b64_json=payload, mime=head.removeprefix("data:").split(";")[0])
    if url.startswith(("https://", "http://")):
        return GeneratedImage(url=url)
    return None


def _no_image(choice: OpenRouterChoice | None) -> GatewayError:
    reasons = [] if choice is None else [choice.finish_reason, choice.native_finish_reason]
    if any((reason or "").upper() in SAFETY_FINISH for reason in reasons):
        return GatewayError("content_policy_violation",
                            "The provider refused to make the image for safety reasons.")
    return GatewayError("no_image", "The model answered without an image.")


def _usage(usage: OpenRouterUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.completion_tokens_details
    images = None if details is None else details.image_tokens
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                 total_tokens=usage.total_tokens,
                 output_tokens_details=UNSET if images is None else {
                     "image_tokens": images,
                     "text_tokens": max(0, usage.completion_tokens - images)})


def decode_response(resp: UpstreamResponse) -> ProviderResult:
    if resp.status >= 400:
        raise _error_of(resp)
    try:
        parsed = _decode(resp.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise GatewayError("upstream_unavailable", "The provider sent an unreadable answer.") \
            from exc
    if parsed.error is not None:  # failed after generation started: the status is in the body
        code = parsed.error.code
        raise map_error(code if isinstance(code, int) and code >= 400 else 502, parsed.error,
                        resp.headers)
    choice = parsed.choices[0] if parsed.choices else None
    items = (choice.message.images if choice and choice.message else None) or []
    images = [image for item in items
              if item.image_url and (image := _image(item.image_url.url)) is not None]
    if not images:
        raise _no_image(choice)
    return ProviderResult(images=images, created=parsed.created or resp.received_at,
                          usage=_usage(parsed.usage), failed=len(items) - len(images))


ADAPTER = Adapter(type="openrouter", capabilities=CAPABILITIES, encode_request=encode_request,
                  decode_response=decode_response, auth_headers=bearer, policy=POLICY,
                  retry=retry)
