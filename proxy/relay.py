"""OpenAI-native routes: bodies forwarded as bytes, answers and event streams relayed."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web
from imagegate.adapters.base import safe_message, status_error
from imagegate.config.api import ErrorEnvelope, Usage
from imagegate.config.errors import GatewayError
from imagegate.middlewares.headers import retry_after, safe_value
from imagegate.proxy.upstream import AnswerBroken

RELAY_WHOLE_BYTES = 4 * 1024 * 1024  # answers up to this are read whole; larger ones stream
# not OpenAI's x-ratelimit-*: they describe the gateway's account, not the caller's key
RELAYED_HEADERS = ("content-type", "content-encoding", "openai-processing-ms", "retry-after")
MID_STREAM_ERROR = (b'event: error\ndata: {"type":"error","error":{"message":"The provider '
                    b'stopped mid-stream.","type":"upstream_error","param":null,'
                    b'"code":"upstream_unavailable"}}\n\n')
COMPLETED = (b"event: image_generation.completed", b"event: image_edit.completed")
log = structlog.get_logger("imagegate.relay")
_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder().encode
_error_view = msgspec.json.Decoder(ErrorEnvelope)


def rewrite_json(raw: bytes, model: str, defaults: Mapping[str, Any],
                 drop: tuple[str, ...] = ()) -> bytes:
    """The client's JSON with `model` set and defaults added; other values stay as sent."""
    fields = _raw_object.decode(raw)
    for name in drop:
        fields.pop(name, None)
    for name, value in defaults.items():
        fields[name] = msgspec.Raw(_encode(value))
    fields["model"] = msgspec.Raw(_encode(model))
    return _encode(fields)


class _UsageView(msgspec.Struct):
    usage: Usage | None = None


_usage_view = msgspec.json.Decoder(_UsageView)


def usage_of(body: bytes) -> Usage | None:
    """`usage` of an OpenAI answer without decoding its base64: the key sits at the top level,
    after `data`, so `{` + the tail from the last `"usage"` is a small JSON object of its own."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    try:
        return _usage_view.decode(b"{" + body[at:]).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The provider's headers worth relaying, each checked (a `Retry-After: 1\x01` is not
    written raw: aiohttp would refuse it and the client would get an empty reply)."""
    out = {}
    for name in RELAYED_HEADERS:
        value = resp.headers.get(name)
        safe = retry_after(value) if name == "retry-after" else safe_value(value or "")
        if safe is not None:
            out[name] = safe
    return out


async def raise_for_upstream(resp: aiohttp.ClientResponse, provider: str) -> None:
    """Errors the gateway answers itself (and may retry elsewhere); others are relayed."""
    status = resp.status
    if status < 400 or (status < 500 and status not in (401, 403, 429)):
        return
    retry_after = resp.headers.get("retry-after")
    message = ""
    said = await _provider_message(resp)
    if status in (401, 403):  # the operator's clue: OpenAI's code and type, never its text
        try:
            refused = _error_view.decode(await resp.read()).error
            log.warning("upstream_refused_credentials", provider=provider, status=status,
                        code=refused.code, type=refused.type)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("upstream_refused_credentials", provider=provider, status=status)
    if status == 429:
        message = said or ""
        if "quota" in message.lower() and "exceeded your current quota" in message.lower():
            error = GatewayError("insufficient_quota", message)
            error.provider_message = said
            raise error
    error = status_error(status, message, retry_after=retry_after)
    if error.code == "upstream_unavailable":
        error.message = f"The provider '{provider}' failed (HTTP {status})."
    error.provider_message = said
    raise error


async def _provider_message(resp: aiohttp.ClientResponse) -> str | None:
    """OpenAI's error message, made safe (for the attempt's log line and 429 answers)."""
    try:
        return safe_message(_error_view.decode(await resp.read()).error.message)
    except (msgspec.DecodeError, msgspec.ValidationError, aiohttp.ClientError, TimeoutError):
        return None


async def relay(request: web.Request, resp: aiohttp.ClientResponse, provider: str,
                *, stream: bool, completed: list[int] | None = None) -> web.StreamResponse:
    """The upstream's answer as it is; `completed` gets the count of final image events."""
    await raise_for_upstream(resp, provider)
    headers = _headers(resp)
    if resp.status >= 400:
        await _raise_relayed_error(resp, headers)
    ctype = resp.headers.get("content-type", "")
    length = resp.content_length
    if not stream and not ctype.startswith("text/event-stream") and (
        length is not None and length <= RELAY_WHOLE_BYTES
    ):
        return web.Response(status=resp.status, body=await resp.read(), headers=headers)
    out = web.StreamResponse(status=resp.status, headers=headers)
    if length is not None and not ctype.startswith("text/event-stream"):
        out.content_length = length
    await out.prepare(request)
    try:
        async for chunk in resp.content.iter_any():  # events go out as they arrive
            if completed is not None:  # an event split across two chunks goes uncounted
                completed[0] += chunk.count(COMPLETED[0]) + chunk.count(COMPLETED[1])
            await out.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # the answer has begun: it cannot be retried or turned into an error status
        log.warning("upstream_broke_mid_answer", provider=provider, error=type(exc).__name__)
        if ctype.startswith("text/event-stream"):
            await out.write(MID_STREAM_ERROR)
            await out.write_eof()
        elif request.transport is not None:  # a truncated body must not look whole
            request.transport.close()
        raise AnswerBroken(out) from exc
    await out.write_eof()
    return out


async def _raise_relayed_error(resp: aiohttp.ClientResponse, headers: dict[str, str]) -> None:
    """OpenAI's own error (status, type, code, param) with its message made safe to show."""
    try:
        error = _error_view.decode(await resp.read()).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise status_error(resp.status, "The provider rejected the request.") from None
    raise GatewayError("invalid_value", safe_message(error.message), param=error.param,
                       status=resp.status, wire_code=error.code, wire_type=error.type,
                       headers={k: v for k, v in headers.items() if k == "retry-after"})
