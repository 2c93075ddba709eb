"""What every adapter shares: the normalised request, upstream envelopes, policies, size helpers."""
from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
from imagegate.config.api import KNOWN_VALUES, Usage
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage

Operation = Literal["generate", "edit"]
DROP: Final = "drop"
REJECT: Final = "reject"
Policy = Literal["drop", "reject"]



class ImageRequest(msgspec.Struct, kw_only=True):
    """One OpenAI images request after routing: `model` is the provider's model id."""

    operation: Operation
    model: str
    prompt: str
    n: int = 1
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    background: str | None = None
    style: str | None = None
    moderation: str | None = None
    input_fidelity: str | None = None
    user: str | None = None
    seed: int | None = None
    stream: bool = False
    partial_images: int | None = None
    images: list[InputImage] = []
    mask: InputImage | None = None
    watermark: bool = False  # from the route's config
    image_only: bool = False  # from the route's config
    unknown: tuple[str, ...] = ()  # fields the client sent that no adapter reads: named dropped


class UpstreamRequest(msgspec.Struct, kw_only=True):
    """What proxy/upstream.py sends: `path` is appended to the provider's base_url."""

    path: str
    body: bytes
    method: str = "POST"
    content_type: str = "application/json"
    headers: dict[str, str] = {}
    dropped: tuple[str, ...] = ()


class UpstreamResponse(msgspec.Struct, kw_only=True):
    status: int
    body: bytes
    headers: Mapping[str, str] = {}  # lower-cased names
    received_at: int = 0  # the gateway's clock (unix seconds) when the answer arrived


class GeneratedImage(msgspec.Struct, kw_only=True):
    """One image a provider made: exactly one of b64_json / url is set."""

    b64_json: str | None = None
    url: str | None = None
    mime: str | None = None  # when the provider says (data URI prefix, inlineData.mimeType)
    revised_prompt: str | None = None
    partials: list[str] | None = None  # base64 renders, coarse to fine (stream partial_images)


class ProviderResult(msgspec.Struct, kw_only=True):
    images: list[GeneratedImage]
    created: int
    usage: Usage | None = None
    failed: int = 0  # images the provider reported as failed inside a 200 answer
    # what the provider says it made, as gpt-image-1 answers (None: not reported)
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None


@dataclass(frozen=True)
class Capabilities:
    generate: bool = True
    edit: bool = True
    mask: bool = False
    images_per_call: int = 1  # n above this is made by concurrent calls
    max_input_images: int = 16
    formats: bool = False  # makes output_format / output_compression itself: no transcoding
    partial_images: bool = False  # renders stream partial_images itself


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@dataclass(frozen=True)
class Adapter:
    type: str
    capabilities: Capabilities
    encode_request: Callable[[ImageRequest], UpstreamRequest] | None = None
    decode_response: Callable[[UpstreamResponse], ProviderResult] | None = None
    auth_headers: Callable[[str], dict[str, str]] = bearer
    # offline providers; the second argument says the request was cancelled (stop between images)
    render: Callable[[ImageRequest, Callable[[], bool]], ProviderResult] | None = None
    passthrough: bool = False  # OpenAI-native: the request is forwarded as bytes, not encoded
    policy: Mapping[str, Policy] = field(default_factory=dict)
    # Given a call and its answer, a changed call to send once instead (e.g. OpenRouter's
    # image-only models asked for text too); None: the answer stands.
    retry: Callable[[ImageRequest, UpstreamResponse], UpstreamRequest | None] | None = None


# --- policies -------------------------------------------------------------------------------

def apply_policy(req: ImageRequest, policy: Mapping[str, Policy]) -> tuple[str, ...]:
    """Names the params the provider cannot honour: REJECT raises 400, DROP is reported back."""
    dropped = []
    for name, action in policy.items():
        value = getattr(req, name)
        if value is None or value is False or value == "auto" or value == []:
            continue  # 0 is a real value (seed=0, output_compression=0): compared by identity
        if action == REJECT:
            raise GatewayError(
                "invalid_value",
                f"The model {req.model!r} does not support `{name}`.",
                param=name,
            )
        dropped.append(name)
    return tuple(dropped)


def unknown_values(req: ImageRequest) -> tuple[str, ...]:
    """Enumerated fields holding a value the gateway does not know (OpenAI may have added it)."""
    return tuple(name for name, known in KNOWN_VALUES.items()
                 if (value := getattr(req, name, None)) is not None and value not in known)


def accept(req: ImageRequest, policy: Mapping[str, Policy]
           ) -> tuple[ImageRequest, tuple[str, ...]]:
    """An adapter's first step: unknown enum values are cleared and named dropped (an adapted
    provider cannot honour them), then the policy names or refuses what the provider lacks."""
    unknown = unknown_values(req)
    if unknown:
        req = msgspec.structs.replace(req, **dict.fromkeys(unknown))
    return req, unknown + apply_policy(req, policy)


def merge_dropped(*groups: Sequence[str]) -> tuple[str, ...]:
    """Dropped-param names in first-seen order, each once."""
    return tuple(dict.fromkeys(name for group in groups for name in group))


# --- sizes ----------------------------------------------------------------------------------

_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
ASPECT_RATIOS: Final = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")


def parse_size(size: str | None) -> tuple[int, int] | None:
    """`"1024x1536"` -> (1024, 1536); None for absent, `auto` or anything not `WxH`."""
    if not size:
        return None
    m = _SIZE.fullmatch(size)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nearest_ratio(width: int, height: int, ratios: Sequence[str] = ASPECT_RATIOS) -> str:
    """The ratio in `ratios` closest to width:height (compared on a log scale)."""
    import math

    target = math.log(width / height)

    def distance(r: str) -> float:
        a, b = r.split(":")
        return abs(math.log(int(a) / int(b)) - target)

    return min(ratios, key=distance)


# --- images ---------------------------------------------------------------------------------



def data_url(image: InputImage) -> str:
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"


_REDACT = re.compile(r"data:[^\s\"']{0,64}base64,[A-Za-z0-9+/=]+|[A-Za-z0-9+/=]{200,}")


def safe_message(text: str, limit: int = 300) -> str:
    """A provider's message fit to show a client: no data URLs, no base64, bounded length."""
    text = _REDACT.sub("[redacted]", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_error(
    status: int, message: str, *, param: str | None = None, retry_after: str | None = None
) -> GatewayError:
    """The DESIGN table's answer to a provider's HTTP status (messages already made safe)."""
    headers = {"retry-after": retry_after} if retry_after else None
    if status in (401, 403):
        return GatewayError("upstream_auth_failed",
                            "The provider rejected the gateway's credentials.")
    if status == 402:
        return GatewayError("insufficient_quota", "The provider account is out of credit.")
    if status == 429:
        return GatewayError("upstream_rate_limited", message or "The provider is rate limiting "
                            "requests.", headers=headers)
    if status == 408 or status == 504:
        return GatewayError("upstream_timeout", "The provider timed out.")
    if 400 <= status < 500:
        return GatewayError("invalid_value", message or "The provider rejected the request.",
                            param=param)
    return GatewayError("upstream_unavailable", f"The provider failed (HTTP {status}).",
                        headers=headers)
