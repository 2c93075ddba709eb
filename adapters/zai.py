"""Zhipu / Z.AI (CogView, GLM-Image): OpenAI generations <-> POST {base_url}/images/generations."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec
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
    nearest_ratio,
    parse_size,
    safe_message,
    status_error,
)
from imagegate.config.errors import GatewayError
from msgspec import UNSET, UnsetType

PATH: Final = "/images/generations"
CAPABILITIES = Capabilities(generate=True, edit=False, mask=False, images_per_call=1,
                            max_input_images=0)
POLICY: dict[str, Policy] = {
    "mask": REJECT,
    "background": DROP, "style": DROP, "moderation": DROP,
    "seed": DROP, "input_fidelity": DROP,
}
QUALITY: Final[Mapping[str, str]] = {
    "max": "hd", "xhigh": "hd", "high": "hd", "hd": "hd",
    "low": "standard", "medium": "standard", "standard": "standard",
}
USER_ID_LENGTH: Final = (6, 128)
# Business codes (numeric strings), first match wins: specific codes before their ranges.
ERRORS: Final = (
    (1000, 1004, "upstream_auth_failed"),
    (1113, 1113, "insufficient_quota"),  # arrears: waiting will not help
    (1110, 1121, "upstream_rate_limited"),
    # The config, not the client, chose the model: a fallback route may still serve it.
    (1211, 1211, "upstream_unavailable"),
    (1220, 1220, "upstream_unavailable"),
    (1210, 1234, "invalid_value"),
    (1300, 1301, "content_policy_violation"),
    (1302, 1302, "upstream_rate_limited"),
)
# Fixed texts: account and auth answers are never relayed (they can name the account or key).
MESSAGES: Final[Mapping[str, str]] = {
    "upstream_auth_failed": "The provider rejected the gateway's credentials",
    "insufficient_quota": "The provider account is out of credit",
    "upstream_rate_limited": "The provider is rate limiting requests",
    "upstream_unavailable": "The provider does not offer this model, or the gateway's account "
                            "may not use it",
}
# Z.AI names the field only inside its (often Chinese) message, e.g. "size参数非法".
PARAM_HINTS: Final = (("size", "size"), ("quality", "quality"), ("user_id", "user"),
                      ("prompt", "prompt"))


@dataclass(frozen=True)
class Family:
    """The sizes and qualities one Z.AI model family accepts."""

    name: str
    sides: tuple[int, int]
    step: int
    max_pixels: int
    presets: tuple[str, ...]  # the provider default first: it wins ties
    qualities: frozenset[str]


GLM_IMAGE = Family("GLM-Image", (1024, 2048), 32, 2**22,
                   ("1280x1280", "1568x1056", "1056x1568", "1472x1088", "1088x1472",
                    "1728x960", "960x1728"), frozenset({"hd"}))
COGVIEW = Family("CogView", (512, 2048), 16, 2**21,
                 ("1024x1024", "768x1344", "864x1152", "1344x768", "1152x864",
                  "1440x720", "720x1440"), frozenset({"hd", "standard"}))
FAMILIES: Final = (("glm-image", GLM_IMAGE),)  # anything else: CogView's rules


class ZaiImageRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    prompt: str
    size: str | UnsetType = UNSET
    quality: str | UnsetType = UNSET
    user_id: str | UnsetType = UNSET
    watermark_enabled: bool  # no default so it is always sent: Z.AI's default is true


class ZaiImage(msgspec.Struct):
    url: str | None = None
    b64_json: str | None = None  # not documented, but the SDK's type allows it


class ZaiError(msgspec.Struct):
    code: str | int | None = None  # real answers send a numeric string, the OpenAPI an int
    message: str = ""


class ZaiImagesResponse(msgspec.Struct):
    created: int | None = None
    data: list[ZaiImage] = []


class ZaiErrorEnvelope(msgspec.Struct):
    error: ZaiError | None = None
    code: str | int | None = None  # the OpenAPI schema's unwrapped form
    message: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ZaiImagesResponse).decode
_decode_error = msgspec.json.Decoder(ZaiErrorEnvelope).decode


def family_of(model: str) -> Family:
    lowered = model.lower()
    return next((fam for key, fam in FAMILIES if key in lowered), COGVIEW)


def is_valid_size(width: int, height: int, family: Family) -> bool:
    low, high = family.sides
    return (f"{width}x{height}" in family.presets
            or (low <= width <= high and low <= height <= high
                and width % family.step == 0 and height % family.step == 0
                and width * height <= family.max_pixels))


def encode_size(size: str | None, family: Family) -> tuple[str | UnsetType, bool]:
    """The `size` Z.AI gets (UNSET: its default) and whether it differs from the asked one."""
    if size is None or size == "auto":
        return UNSET, False
    parsed = parse_size(size)
    if parsed is None:
        raise GatewayError("invalid_value", f"The size {size!r} is not valid for "
                                            f"{family.name}: use WxH.", param="size")
    if is_valid_size(*parsed, family):
        return size, False
    ratios = [preset.replace("x", ":") for preset in family.presets]
    return nearest_ratio(*parsed, ratios).replace(":", "x"), True


def encode_request(req: ImageRequest) -> UpstreamRequest:
    if req.operation == "edit" or req.images:
        raise GatewayError("invalid_value", f"Model {req.model!r} does not support image "
                                            "editing.", param="image")
    req, first = accept(req, POLICY)
    dropped = list(first)
    family = family_of(req.model)
    size, changed = encode_size(req.size, family)
    quality = QUALITY.get(req.quality or "", UNSET)
    if quality is not UNSET and quality not in family.qualities:
        dropped.append("quality")  # GLM-Image renders `hd` only
        quality = UNSET
    user_id: str | UnsetType = UNSET
    if req.user and USER_ID_LENGTH[0] <= len(req.user) <= USER_ID_LENGTH[1]:
        user_id = req.user
    elif req.user:
        dropped.append("user")
    if changed:  # mapped to the nearest preset: the client must hear it
        dropped.append("size")
    body = ZaiImageRequest(model=req.model, prompt=req.prompt, size=size, quality=quality,
                           user_id=user_id, watermark_enabled=req.watermark)
    return UpstreamRequest(path=PATH, body=_encode(body), dropped=tuple(dropped))


def _classify(code: str | int | None) -> str | None:
    try:
        number = int(code)  # type: ignore[arg-type]  # None is caught below
    except (TypeError, ValueError):
        return None
    return next((name for low, high, name in ERRORS if low <= number <= high), None)


def _param(message: str) -> str | None:
    lowered = message.lower()
    return next((param for hint, param in PARAM_HINTS if hint in lowered), None)


def map_error(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """A Z.AI error answer -> the gateway's error (never relaying auth or account text)."""
    try:
        envelope = _decode_error(body)
        err = envelope.error or ZaiError(code=envelope.code, message=envelope.message)
    except (msgspec.DecodeError, msgspec.ValidationError):
        err = ZaiError()  # not Z.AI's JSON (a proxy's HTML page): the status is all we know
    retry_after = headers.get("retry-after")
    if status in (401, 403) or status >= 500:  # the status says it all; code 500 is HTTP 500
        return status_error(status, "", retry_after=retry_after)
    name, message = _classify(err.code), safe_message(err.message)
    if name is None:
        return status_error(status, "" if status == 429 else message, retry_after=retry_after)
    if name == "content_policy_violation":
        return GatewayError(name, message or "The provider refused the request for safety "
                                             "reasons.")
    if name == "invalid_value":
        return GatewayError(name, message or "The provider rejected the request.",
                            param=_param(err.message))
    wait = {"retry-after": retry_after} if retry_after and name == "upstream_rate_limited" else {}
    return GatewayError(name, f"{MESSAGES[name]} ({err.code}).", headers=wait)


def decode_response(resp: UpstreamResponse) -> ProviderResult:
    if resp.status >= 400:
        raise map_error(resp.status, resp.body, resp.headers)
    try:
        parsed = _decode(resp.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise GatewayError("upstream_unavailable", "The provider sent an unreadable answer.") \
            from exc
    images = [GeneratedImage(url=item.url) if item.url else GeneratedImage(b64_json=item.b64_json)
              for item in parsed.data if item.url or item.b64_json]
    if not images:
        raise GatewayError("no_image", "The provider answered without an image.")
    return ProviderResult(images=images, created=parsed.created or resp.received_at,
                          failed=len(parsed.data) - len(images))


ADAPTER = Adapter(type="zai", capabilities=CAPABILITIES, encode_request=encode_request,
                  decode_response=decode_response, auth_headers=bearer, policy=POLICY)
