"""The passthrough path (OpenAI routes): bodies forwarded as bytes (JSON as sent, multipart
streamed), answers and event streams relayed, counted from the answer itself."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web
from imagegate.adapters.base import safe_message, status_error
from imagegate.adapters.openai import is_gpt_image_model
from imagegate.config.api import DEFAULT_MODEL, ErrorEnvelope, ImagesResponse, Usage
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage
from imagegate.middlewares.forms import FileCheck, Form, FormUpload, forward_length
from imagegate.middlewares.headers import retry_after, safe_value
from imagegate.middlewares.keys import ParsedRequest
from imagegate.proxy.answer import Answer
from imagegate.proxy.finish import decode_image, json_response
from imagegate.proxy.gateway import Gateway
from imagegate.proxy.routing import RouteState
from imagegate.proxy.upstream import Call

RELAY_WHOLE_BYTES = 4 * 1024 * 1024  # answers up to this are read whole; larger ones stream
# not OpenAI's x-ratelimit-*: they describe the gateway's account, not the caller's key
RELAYED_HEADERS = ("content-type", "content-encoding", "openai-processing-ms", "retry-after")
MID_STREAM_ERROR = (b'event: error\ndata: {"type":"error","error":{"message":"The provider '
                    b'stopped mid-stream.","type":"upstream_error","param":null,'
                    b'"code":"upstream_unavailable"}}\n\n')
COMPLETED = (b"event: image_generation.completed", b"event: image_edit.completed")
log = structlog.get_logger("imagegate.passthrough")
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


def usage_of(body: bytes, start: int = 0, end: int | None = None) -> Usage | None:
    """`usage` of an OpenAI answer without decoding its base64: the key sits at the top level,
    after `data`, so `{` + the tail from the last `"usage"` is a small JSON object of its own.
    `start`/`end` bound the search (a backward search for a 7-byte name has no fast path in
    CPython: ~60 us over a 137 KB answer that has no usage, as dall-e answers have none)."""
    at = body.rfind(b'"usage"', start, len(body) if end is None else end)
    if at < 0:
        return None
    try:
        return _usage_view.decode(b"{" + body[at:]).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


IMAGE_KEYS = (b'"b64_json"', b'"url"')


_B64_KEY, _URL_KEY = IMAGE_KEYS


def counted(body: bytes) -> tuple[int, Usage | None]:
    """The images and `usage` of an OpenAI answer body, in one pass over its keys: `usage` is
    searched for only outside the image values (after the last, else before the first)."""
    images, first, last = _image_values(body)
    usage = usage_of(body, last)
    if usage is None and first > 0:
        usage = usage_of(body, 0, first)
    return images, usage


def _image_values(body: bytes) -> tuple[int, int, int]:
    """The image keys of an answer body, where the first starts and where the last value
    ends (0, 0 when there is none): each `"b64_json"` or `"url"` string followed by `:` is
    a key, and its string value (an image, a link) is stepped over with one memchr for its
    closing quote. Only the short stretches between the values are searched for names (a
    search across the base64 itself, or a walk over every string, costs several times more).
    An unescaped quote in JSON opens or closes a string, and one followed by a name opens it;
    an escaped one is inside a string."""
    count, pos, find, size = 0, 0, body.find, len(body)
    first = last = 0
    while True:
        at = find(_B64_KEY, pos)
        url = find(_URL_KEY, pos, at if at >= 0 else size)  # only before the next b64_json
        if url >= 0:
            at, pos = url, url + len(_URL_KEY)
        elif at >= 0:
            pos = at + len(_B64_KEY)
        else:
            return count, first, last
        if at and body[at - 1] == 0x5C and _escaped(body, at):
            continue  # an escaped quote: text inside a string, not a name
        after = body[pos:pos + 16].lstrip()
        if after[:1] != b":":
            continue  # the string "url" as a value, not a key
        if not count:
            first = at
        count += 1
        last = pos
        start = find(b'"', pos)  # the value, when it is a string: stepped over whole
        if start < 0 or body[pos:start].strip(b" \t\r\n") != b":":
            continue
        end = find(b'"', start + 1)
        while end > 0 and body[end - 1] == 0x5C and _escaped(body, end):  # a backslash first
            end = find(b'"', end + 1)
        if end < 0:
            return count, first, size
        pos = last = end + 1


def _escaped(body: bytes, quote: int) -> bool:
    """Whether the quote at `quote` is escaped (an odd run of backslashes before it)."""
    run = 0
    while body[quote - 1 - run] == 0x5C:
        run += 1
    return run % 2 == 1


def add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    if more is None or total is None:
        return total or more
    details: dict[str, int] = {}
    for part in (total.input_tokens_details, more.input_tokens_details):
        for kind, value in (part if isinstance(part, dict) else {}).items():
            details[kind] = details.get(kind, 0) + value
    summed = Usage(input_tokens=total.input_tokens + more.input_tokens,
                   output_tokens=total.output_tokens + more.output_tokens,
                   total_tokens=total.total_tokens + more.total_tokens)
    if details:  # else Usage's zeros: OpenAI's schema requires the field
        summed.input_tokens_details = details
    return summed


class Tally:
    """The images and tokens of an answer relayed chunk by chunk: a body's image keys and its
    closing `usage`, or each completed event and its `usage` (a stream's usages add up). Only
    a bounded tail is kept: `usage` closes the body and each event."""

    TAIL, HEAD = 4096, 64

    def __init__(self, events: bool) -> None:
        self.events, self.head, self.tail = events, b"", b""
        self.images = 0
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if not self.events:  # a key split across two chunks is counted once, in the second
            # a key ends with a quote: none ends in a chunk of pure base64 (one memchr instead
            # of two searches, ~60 us a 64 KB chunk, across a multi-megabyte answer)
            if chunk.find(b'"') >= 0:
                self.images += sum((self.tail[1 - len(k):] + chunk).count(k)
                                   for k in IMAGE_KEYS)
            self.tail = (chunk if len(chunk) >= self.TAIL else self.tail + chunk)[-self.TAIL:]
            return
        pieces = (self.tail + chunk).split(b"\n\n")
        for i, piece in enumerate(pieces):
            head = self.head if i == 0 and self.head else piece[:self.HEAD]
            if i < len(pieces) - 1:  # an event that ended
                if head.lstrip().startswith(COMPLETED):
                    self.images += 1
                    self.usage = add_usage(self.usage, counted(piece)[1])
            elif len(piece) > self.TAIL:  # the event still coming: its type and its end kept
                self.head, self.tail = head, piece[-self.TAIL:]
            else:
                self.head, self.tail = b"", piece

    @property
    def cut(self) -> bool:
        """An event stream that ended without a whole completed event, or inside an event
        (an upstream that closed its connection mid-event, without chunked framing)."""
        return self.events and (self.images == 0 or bool(self.tail.strip() or self.head))

    def finish(self) -> Usage | None:
        return self.usage if self.events else usage_of(self.tail)


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


async def relay(request: web.Request, call: Call, provider: str, *, stream: bool,
                answer_headers: Mapping[str, str]) -> tuple[web.StreamResponse, Tally | None]:
    """The upstream's answer as it is, and (relayed in chunks) what it held. An answer that
    breaks after it began reaching the client marks the call broken."""
    resp = call.response
    headers = _headers(resp)
    if resp.status >= 400:  # the gateway's own error (maybe retried elsewhere), else OpenAI's
        await raise_for_upstream(resp, provider)
        await _raise_relayed_error(resp, headers)
    headers.update(answer_headers)
    ctype = resp.headers.get("content-type", "")
    length = resp.content_length
    events = ctype.startswith("text/event-stream")
    if not stream and not events and length is not None and length <= RELAY_WHOLE_BYTES:
        return web.Response(status=resp.status, body=await resp.read(), headers=headers), None
    out = web.StreamResponse(status=resp.status, headers=headers)
    if length is not None and not events:
        out.content_length = length
    await out.prepare(request)
    tally = Tally(events)
    try:
        async for chunk in resp.content.iter_any():  # events go out as they arrive
            tally.feed(chunk)
            await out.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # the answer has begun: it cannot be retried or turned into an error status
        log.warning("upstream_broke_mid_answer", provider=provider, error=type(exc).__name__)
        if events:
            await out.write(MID_STREAM_ERROR)
            await out.write_eof()
        elif request.transport is not None:  # a truncated body must not look whole
            request.transport.close()
        call.broken = True
        return out, tally
    if tally.cut:  # EOF inside an event reads as a clean end: the client must know it is not
        log.warning("upstream_broke_mid_answer", provider=provider, error="stream_cut")
        await out.write(MID_STREAM_ERROR)
        call.broken = True
    await out.write_eof()
    return out, tally


async def _raise_relayed_error(resp: aiohttp.ClientResponse, headers: dict[str, str]) -> None:
    """OpenAI's own error (status, type, code, param) with its message made safe to show."""
    try:
        error = _error_view.decode(await resp.read()).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise status_error(resp.status, "The provider rejected the request.") from None
    raise GatewayError("invalid_value", safe_message(error.message), param=error.param,
                       status=resp.status, wire_code=error.code, wire_type=error.type,
                       headers={k: v for k, v in headers.items() if k == "retry-after"})


def _answer(response: web.StreamResponse, tally: Tally | None, broken: bool) -> Answer:
    """Images and tokens of an OpenAI answer, counted from the answer itself (never from the
    request's n): its image keys and `usage`, or a stream's completed events and theirs."""
    if response.status != 200:
        return Answer(response, 0, None, broken)
    if tally is not None:  # a broken stream delivered its completed events; a body, nothing
        if broken and not tally.events:
            return Answer(response, 0, None, broken)
        return Answer(response, tally.images, tally.finish(), broken)
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return Answer(response, 0, None, broken)
    return Answer(response, *counted(body), broken)


async def send(gw: Gateway, request: web.Request, route: RouteState, path: str, data: Any,
               headers: dict[str, str], fields: Any, host_links: bool,
               answer_headers: Mapping[str, str]) -> Answer:
    """One call to an OpenAI route and its answer relayed (or, when the gateway holds back
    `response_format` from a GPT image model, its base64 images turned into hosted links)."""
    stream = bool(fields.stream)
    async with gw.upstream.attempt(route.provider, route.model, path, data=data,
                                   headers=headers, stream=stream) as call:
        if host_links and fields.response_format == "url" and call.response.status == 200 \
                and not stream:
            raw = await call.response.read()
            response: web.StreamResponse = await host_images(gw, request, raw, answer_headers)
            tally = None
        else:
            response, tally = await relay(request, call, route.provider, stream=stream,
                                          answer_headers=answer_headers)
        broken = call.broken
    return _answer(response, tally, broken)


async def host_images(gw: Gateway, request: web.Request, raw: bytes,
                      answer_headers: Mapping[str, str]) -> web.Response:
    """An OpenAI answer with base64 images, turned into signed gateway links."""
    try:
        answer = msgspec.json.decode(raw, type=ImagesResponse)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise GatewayError("upstream_unavailable", "The provider's answer was not "
                           "understood.") from None
    base = gw.base_url(request)
    for item in answer.data:
        if isinstance(item.b64_json, str):
            item.url = await gw.finisher.host(*decode_image(item.b64_json), base)
            item.b64_json = msgspec.UNSET
    return json_response(answer, dict(answer_headers))


async def forward_json(gw: Gateway, request: web.Request, route: RouteState,
                       parsed: ParsedRequest, path: str,
                       answer_headers: Mapping[str, str]) -> Answer:
    """The client's JSON as it came; only `model` (and filled defaults) rewritten when needed.
    GPT image models answer only base64 and refuse `response_format`: the gateway keeps the
    field to itself and hosts the images when the client asked for links."""
    assert parsed.raw is not None
    raw, body = parsed.raw, parsed.body
    hosted = body.response_format is not None and is_gpt_image_model(route.model)
    if parsed.rewritten or route.model != parsed.public_model or hosted:
        raw = rewrite_json(raw, route.model, parsed.filled, ("response_format",) if hosted else ())
    return await send(gw, request, route, path, raw, {"Content-Type": "application/json"},
                      body, hosted, answer_headers)


async def forward_form(gw: Gateway, request: web.Request, route: RouteState, form: Form,
                       check: FileCheck, path: str, filled: dict[str, str],
                       fields: Any, answer_headers: Mapping[str, str]) -> Answer:
    """A multipart form streamed part by part as it arrives; every byte as sent but the model
    value (and a held-back `response_format`, when it came before the files)."""
    extra = dict(filled)
    if "model" not in form.raw_fields and route.model != DEFAULT_MODEL:
        extra["model"] = route.model
    hosted = is_gpt_image_model(route.model) and "response_format" in form.raw_fields
    drop = frozenset({"response_format"}) if hosted else frozenset()
    headers = {"Content-Type": request.headers["Content-Type"]}
    length = forward_length(form, route.model, extra, drop)
    if length is not None:
        headers["Content-Length"] = str(length)  # some upstreams refuse chunked uploads
    upload = FormUpload(form, check, route.model, extra, drop)
    try:
        answer = await send(gw, request, route, path, upload, headers, fields, hosted,
                            answer_headers)
    except GatewayError:
        if upload.failure is not None:  # the client's fault, surfaced through aiohttp's writer
            raise upload.failure from None
        raise
    if upload.failure is not None:
        raise upload.failure
    return answer


async def forward_rebuilt(gw: Gateway, request: web.Request, route: RouteState, path: str,
                          text: dict[str, str], files: list[InputImage],
                          mask: InputImage | None, fields: Any,
                          answer_headers: Mapping[str, str]) -> Answer:
    """A form already read into memory (for an adapter that failed) sent on to an OpenAI route,
    rebuilt with aiohttp's multipart writer: same fields and files, the route's model."""
    hosted = is_gpt_image_model(route.model) and "response_format" in text
    writer = aiohttp.MultipartWriter("form-data")
    for name, value in {**text, "model": route.model}.items():
        if not (hosted and name == "response_format"):
            writer.append(value).set_content_disposition("form-data", name=name)
    named = [("image" if len(files) == 1 else "image[]", f) for f in files]
    for name, image in named + ([("mask", mask)] if mask is not None else []):
        part = writer.append(image.data, {"Content-Type": image.mime})
        part.set_content_disposition("form-data", name=name, filename=image.filename)
    return await send(gw, request, route, path, writer, {}, fields, hosted, answer_headers)
