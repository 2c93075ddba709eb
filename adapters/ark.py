"""Volcengine Ark (Seedream / SeedEdit): OpenAI images <-> POST {base_url}/images/generations."""
from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from functools import partial
from typing import Final

import msgspec
from imagegate.adapters.ark_wire import (
    ArkError,
    ArkErrorEnvelope,
    ArkImage,
    ArkImageRequest,
    ArkImagesResponse,
    Family,
)
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
    parse_size,
    safe_message,
    status_error,
)
from imagegate.config.api import Usage
from imagegate.config.errors import GatewayError
from imagegate.config.images import sniff_mime
from msgspec import UNSET, UnsetType

PATH: Final = "/images/generations"  # generations and edits alike: `image` decides the mode
CAPABILITIES = Capabilities(generate=True, edit=True, mask=False, images_per_call=1,
                            max_input_images=14)
POLICY: dict[str, Policy] = {
    "mask": REJECT,  # Ark has no mask: editing the whole image would silently differ
    "quality": DROP, "background": DROP, "style": DROP, "moderation": DROP,
    "input_fidelity": DROP, "user": DROP,
}
SEED_RANGE: Final = (-1, 2_147_483_647)
# The provider account's billing state: the gateway's problem, not the client's. The dispatch
# loop tries the next route; with none left the client gets 402 naming the state (never the
# account, which Ark's own message names).
BILLING: Final[Mapping[str, str]] = {
    "AccountOverdueError": "The provider account has an overdue balance",
    "QuotaExceeded": "The provider account is out of quota",
}
# Exact Ark error codes whose meaning beats the HTTP status; everything else goes by status.
ERRORS: Final[Mapping[str, str]] = {
    "AuthenticationError": "upstream_auth_failed",
    "AccessDenied": "upstream_auth_failed",
    "InvalidEndpointOrModel.NotFound": "upstream_unavailable",
    "ModelNotOpen": "upstream_unavailable",
    **dict.fromkeys(BILLING, "insufficient_quota"),
}
# Fixed texts: an auth or account answer may echo the key or account, so it is never relayed.
MESSAGES: Final[Mapping[str, str]] = {
    "upstream_auth_failed": "The provider rejected the gateway's credentials",
    "upstream_unavailable": "The provider does not offer this model, or it is not enabled "
                            "for the gateway's account",
    "insufficient_quota": "The provider account cannot be billed",
}
# Refusals: Input/Output Text/Image ...SensitiveContentDetected (the model's own check) and
# the content-security service's Input/Output{Text,Image}RiskDetection, dotted variants too.
SAFETY: Final = ("SensitiveContentDetected", "RiskDetection")


def is_safety(code: str) -> bool:
    return any(marker in code for marker in SAFETY)


def _reject(param: str, message: str) -> GatewayError:
    return GatewayError("invalid_value", message, param=param)


def _ceil16(value: float) -> int:
    return max(16, math.ceil(value / 16) * 16)


def fit_pixels(width: int, height: int, *, low: int, high: int) -> tuple[int, int]:
    """Seedream 4+: total pixels in [low, high], aspect in [1/16, 16]; too small scales up."""
    if not 1 / 16 <= width / height <= 16:
        raise _reject("size", f"The size {width}x{height} has an aspect ratio beyond 1:16.")
    if width * height > high:
        raise _reject("size", f"The size {width}x{height} is above the model's maximum of "
                              f"{math.isqrt(high)}x{math.isqrt(high)} pixels.")
    if width * height >= low:
        return width, height
    scale = math.sqrt(low / (width * height))
    return _ceil16(width * scale), _ceil16(height * scale)


def fit_sides(width: int, height: int, *, low: int, high: int) -> tuple[int, int]:
    """Seedream 3.0 t2i: each side in [low, high]; a short side scales up, a long side is 400."""
    if max(width, height) <= high and min(width, height) >= low:
        return width, height
    scale = low / min(width, height)
    fitted = (_ceil16(width * scale), _ceil16(height * scale)) if scale > 1 else (width, height)
    if max(fitted) > high:
        raise _reject("size", f"The size {width}x{height} is outside the model's range "
                              f"{low}x{low} to {high}x{high}.")
    return fitted


SEEDREAM_4 = Family("Seedream 4.0", "2K", {"1K": "1K", "2K": "2K", "4K": "4K"},
                    partial(fit_pixels, low=1280 * 720, high=4096 * 4096), False, (0, 14),
                    substitutes={"3K": "4K"})
# 4.5 and 5.0 refuse anything under 2560x1440 pixels ("image size must be at least 3686400
# pixels"): OpenAI's 1024-class sizes scale up, keeping the ratio, and are named.
MIN_PIXELS_45: Final = 2560 * 1440
SEEDREAM_4_5 = Family("Seedream 4.5", "2K", {"2K": "2K", "4K": "4K"},
                      partial(fit_pixels, low=MIN_PIXELS_45, high=4096 * 4096), False, (0, 14),
                      substitutes={"1K": "2K", "3K": "4K"})
SEEDREAM_5 = Family("Seedream 5.0", "2K", {"2K": "2K", "3K": "3K"},
                    partial(fit_pixels, low=MIN_PIXELS_45, high=10_404_496), False, (0, 14),
                    substitutes={"1K": "2K", "4K": "3K"}, formats=frozenset({"png", "jpeg"}))
# 5.0 Pro tops out at 2K (2048x2048 pixels) [3p]: only the range both sources allow is sent.
SEEDREAM_5_PRO = Family("Seedream 5.0 Pro", "2K", {"2K": "2K"},
                        partial(fit_pixels, low=MIN_PIXELS_45, high=2048 * 2048), False, (0, 10),
                        substitutes={"1K": "2K", "3K": "2K", "4K": "2K"},
                        formats=frozenset({"png", "jpeg"}))
SEEDREAM_3_T2I = Family("Seedream 3.0 t2i", "1024x1024",
                        {"1K": "1024x1024", "2K": "2048x2048"},
                        partial(fit_sides, low=512, high=2048), True, (0, 0))
SEEDEDIT = Family("SeedEdit", "adaptive", {"ADAPTIVE": "adaptive"}, None, True, (1, 1))
# First match on a substring of the model id wins; anything else (ep-… endpoint ids,
# unknown models) is treated as Seedream 4.0, whose range is the widest.
FAMILIES: Final = (("seededit", SEEDEDIT), ("seedream-3-0-t2i", SEEDREAM_3_T2I),
                   ("seedream-4-5", SEEDREAM_4_5), ("seedream-5-0-pro", SEEDREAM_5_PRO),
                   ("seedream-5", SEEDREAM_5), ("seedream-4", SEEDREAM_4))


def family_of(model: str) -> Family:
    lowered = model.lower()
    return next((fam for key, fam in FAMILIES if key in lowered), SEEDREAM_4)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ArkImagesResponse).decode
_decode_error = msgspec.json.Decoder(ArkErrorEnvelope).decode


def encode_size(size: str | None, family: Family) -> tuple[str, bool]:
    """The `size` Ark gets and whether it differs from what the client asked."""
    if size is None or size == "auto":
        return family.default_size, False
    named = family.named_sizes.get(size.upper())
    if named is not None:
        return named, False
    substitute = family.substitutes.get(size.upper())
    if substitute is not None:  # a tier this family lacks: the nearest one it has, named
        return substitute, True
    if family.fit is None:
        return family.default_size, True
    parsed = parse_size(size)
    if parsed is None:
        raise _reject("size", f"The size {size!r} is not valid for {family.name}: use "
                              f"{', '.join(family.named_sizes)} or WxH.")
    fitted = family.fit(*parsed)
    return f"{fitted[0]}x{fitted[1]}", fitted != parsed


def _check_images(req: ImageRequest, family: Family) -> None:
    low, high = family.images
    if len(req.images) > high:
        raise _reject("image", f"The model {req.model!r} " + (
            "does not support input images." if high == 0 else
            f"accepts at most {high} input image(s)."))
    if len(req.images) < low:
        raise _reject("image", f"The model {req.model!r} requires an input image.")


def _seed(req: ImageRequest, family: Family) -> int | UnsetType:
    if req.seed is None or not family.seed:
        return UNSET
    if not SEED_RANGE[0] <= req.seed <= SEED_RANGE[1]:
        raise _reject("seed", f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}.")
    return req.seed


def encode_request(req: ImageRequest) -> UpstreamRequest:
    req, first = accept(req, POLICY)
    dropped = list(first)
    family = family_of(req.model)
    _check_images(req, family)
    size, changed = encode_size(req.size, family)
    if changed:  # scaled up or replaced by `adaptive`: the client must hear it
        dropped.append("size")
    if req.seed is not None and not family.seed:
        dropped.append("seed")
    urls = [data_url(image) for image in req.images]
    # 5.0 makes png/jpeg itself; otherwise (4.x JPEG, webp) the gateway transcodes
    fmt = req.output_format if req.output_format in family.formats else UNSET
    body = ArkImageRequest(
        model=req.model, prompt=req.prompt, size=size, seed=_seed(req, family),
        output_format=fmt or UNSET,
        image=(urls[0] if len(urls) == 1 else urls) if urls else UNSET,
        response_format="b64_json", watermark=req.watermark,
    )
    return UpstreamRequest(path=PATH, body=_encode(body), dropped=tuple(dropped))


def map_error(status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
    """An Ark error answer -> the gateway's error (never relaying auth text or base64)."""
    try:
        err = _decode_error(body).error or ArkError()
    except (msgspec.DecodeError, msgspec.ValidationError):
        err = ArkError()  # not Ark's JSON (a proxy's HTML page): the status is all we know
    code, message = err.code, safe_message(err.message)
    retry_after = headers.get("retry-after")
    if is_safety(code):
        return GatewayError("content_policy_violation",
                            message or "The provider refused the request for safety reasons.")
    if code in BILLING:
        return GatewayError("insufficient_quota", f"{BILLING[code]} ({code}).")
    mapped = ERRORS.get(code) or ("upstream_auth_failed" if status in (401, 403) else
                                  "upstream_unavailable" if status == 404 else None)
    if mapped is not None:
        return GatewayError(mapped, f"{MESSAGES[mapped]} ({code or status}).")
    if status == 429:
        return status_error(429, f"The provider is rate limiting requests ({code or status}).",
                            retry_after=retry_after)
    if status < 500:
        return status_error(status, message, param=err.param or None)
    return status_error(status, "", retry_after=retry_after)


def _mime(b64: str) -> str:
    try:
        head = base64.b64decode(b64[:16], validate=True)
    except (binascii.Error, ValueError):
        return "image/jpeg"
    return sniff_mime(head) or "image/jpeg"  # Ark's documented output format


def _no_image(items: list[ArkImage]) -> GatewayError:
    codes = sorted({item.error.code for item in items if item.error is not None})
    if any(is_safety(code) for code in codes):
        return GatewayError("content_policy_violation", "The provider's safety system blocked "
                                                        f"the image ({', '.join(codes)}).")
    detail = f" ({', '.join(codes)})" if codes else ""
    return GatewayError("no_image", f"The provider answered without an image{detail}.")


def decode_response(resp: UpstreamResponse) -> ProviderResult:
    if resp.status >= 400:
        raise map_error(resp.status, resp.body, resp.headers)
    try:
        parsed = _decode(resp.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise GatewayError("upstream_unavailable", "The provider sent an unreadable answer.") \
            from exc
    if parsed.error is not None and not parsed.data:
        raise map_error(502, resp.body, resp.headers)
    images = [GeneratedImage(b64_json=item.b64_json, mime=_mime(item.b64_json))
              if item.b64_json else GeneratedImage(url=item.url)
              for item in parsed.data if item.error is None and (item.b64_json or item.url)]
    if not images:
        raise _no_image(parsed.data)
    usage = parsed.usage
    return ProviderResult(
        images=images,
        created=parsed.created or parsed.created_at or resp.received_at,
        failed=len(parsed.data) - len(images),
        usage=None if usage is None else Usage(
            output_tokens=usage.output_tokens, total_tokens=usage.total_tokens,
            generated_images=UNSET if usage.generated_images is None else usage.generated_images),
    )


ADAPTER = Adapter(type="ark", capabilities=CAPABILITIES, encode_request=encode_request,
                  decode_response=decode_response, auth_headers=bearer, policy=POLICY)
