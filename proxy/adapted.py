"""The adapted path (every provider but OpenAI): the request encoded per provider, `n` fanned out
as concurrent calls (or offline renders), the answers normalised into OpenAI's shape."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from aiohttp import web
from imagegate.adapters.base import ImageRequest, ProviderResult, UpstreamRequest, UpstreamResponse
from imagegate.adapters.local import TestDouble, fault_error
from imagegate.config.api import ImagesResponse, Usage
from imagegate.config.errors import GatewayError
from imagegate.middlewares.headers import header_list
from imagegate.proxy import sse
from imagegate.proxy.answer import Answer
from imagegate.proxy.budget import BUDGET, Budget
from imagegate.proxy.fallback import Unsuitable
from imagegate.proxy.finish import json_response
from imagegate.proxy.gateway import Gateway
from imagegate.proxy.routing import RouteState
from imagegate.proxy.upstream import ProviderState, Upstream

log = structlog.get_logger("imagegate.adapted")
STREAMED_BODY_BYTES = 256 * 1024


@dataclass
class Produced:
    """A provider's images made into the client's answer."""

    body: ImagesResponse
    failed: int  # images asked for and not delivered
    broken: bool = False  # an adapted answer is whole before it is sent
    partials: list[list[str]] | None = None  # per image of body.data: partial renders (b64)

    @property
    def images(self) -> int:
        return len(self.body.data)

    @property
    def usage(self) -> Usage | None:
        return self.body.usage if isinstance(self.body.usage, Usage) else None


def check_capabilities(state: ProviderState, req: ImageRequest) -> None:
    caps, model = state.adapter.capabilities, req.model
    if req.operation == "edit" and not caps.edit:
        raise GatewayError("invalid_value", f"The model '{model}' does not support image "
                           "editing.", param="image")
    if req.operation == "generate" and not caps.generate:
        raise GatewayError("invalid_value", f"The model '{model}' needs an input image.",
                           param="image")
    if req.mask is not None and not caps.mask:
        raise GatewayError("invalid_value", f"The model '{model}' cannot apply a mask.",
                           param="mask")
    if len(req.images) > caps.max_input_images:
        raise GatewayError("invalid_value", f"The model '{model}' takes at most "
                           f"{caps.max_input_images} input images.", param="image")


def split_n(n: int, per_call: int) -> list[int]:
    full, rest = divmod(n, per_call)
    return [per_call] * full + ([rest] if rest else [])


def prepare(state: ProviderState, req: ImageRequest, budget: Budget | None = None
            ) -> tuple[list[UpstreamRequest], tuple[str, ...]]:
    """Every provider request of the fan-out, built and checked before any is sent, and the
    params named as dropped. What this route cannot honour makes it unsuitable."""
    try:
        check_capabilities(state, req)
        adapter = state.adapter
        encoded: list[UpstreamRequest] = []
        if adapter.encode_request is not None:
            counts = split_n(req.n, adapter.capabilities.images_per_call)
            if budget is not None:
                held = sum(len(i.data) for i in req.images) + (len(req.mask.data)
                                                               if req.mask else 0)
                budget.check_bodies(held, len(set(counts)))
            # calls alike share one body: an input image is encoded once, not n times
            built = {k: adapter.encode_request(msgspec.structs.replace(req, n=k))
                     for k in dict.fromkeys(counts)}
            encoded = [built[k] for k in counts]
    except GatewayError as error:
        if error.code != "invalid_value":
            raise
        raise Unsuitable(error) from None
    dropped = encoded[0].dropped if encoded else ()
    if req.stream and req.partial_images and not state.adapter.capabilities.partial_images:
        dropped = (*dropped, "partial_images")  # one completed event per image, no partials
    return encoded, (*dropped, *req.unknown)


async def render(upstream: Upstream, state: ProviderState, req: ImageRequest,
                 make: Callable[[ImageRequest, Callable[[], bool]], ProviderResult],
                 double: TestDouble | None = None) -> ProviderResult:
    """An offline provider's attempt: capped, logged and counted like an HTTP one. A route's
    test double (latency_s, fail) waits, then fails as that error from a real provider.
    Cancelled, the render stops before its next image, and holds its place under
    max_concurrency until its thread has ended (a hang-up must not let more renders run than
    the cap)."""
    async with upstream.slot(state, req.model, "render") as slot:  # failures: slot.failure
        if double is not None:
            await asyncio.sleep(double.latency())
            fault = double.fault()
            if fault is not None:
                slot.status, slot.outcome, error = fault_error(fault, state.name)
                raise error
        stop = threading.Event()
        work = asyncio.get_running_loop().run_in_executor(None, make, req, stop.is_set)
        try:
            result = await asyncio.shield(work)  # awaited below even when cancelled
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait({work})
            if not work.cancelled():
                work.exception()  # retrieved: RenderStopped is the expected end
            raise
        slot.status, slot.outcome = 200, "ok"
        return result


async def call_provider(upstream: Upstream, state: ProviderState, req: ImageRequest,
                        encoded: list[UpstreamRequest], double: TestDouble | None = None
                        ) -> tuple[list[ProviderResult], int]:
    """The provider's answers to the fan-out, and how many images the failed calls would have
    made (some calls failing does not sink the others)."""
    adapter = state.adapter
    if adapter.render is not None:
        return [await render(upstream, state, req, adapter.render, double)], 0
    decode = adapter.decode_response
    assert decode is not None

    async def exchange(up: UpstreamRequest, last: bool) -> ProviderResult | UpstreamRequest:
        """One call's decoded answer, or the changed call the adapter asks to send instead."""
        headers = {"Content-Type": up.content_type, **up.headers}
        data: Any = up.body
        if len(up.body) > STREAMED_BODY_BYTES:  # the shared body sent a slice at a time, as
            data = _slices(up.body)  # each socket takes it: n calls hold no copies of it
            headers["Content-Length"] = str(len(up.body))  # so: not chunked
        async with upstream.attempt(state.name, req.model, up.path, data=data,
                                    headers=headers, method=up.method) as call:
            resp = call.response
            body = await resp.read()
            received = UpstreamResponse(status=resp.status, body=body,
                                        headers={k.lower(): v for k, v in resp.headers.items()},
                                        received_at=int(time.time()))
            if call.slot.upstream_id is None:  # no id header: the one in the answer's body
                call.slot.upstream_id = answer_id(body)
            again = None if last or adapter.retry is None else adapter.retry(req, received)
            # decoded inside the attempt: its log line carries the provider's error message
            return again if again is not None else decode(received)

    async def one(up: UpstreamRequest) -> ProviderResult:
        first = await exchange(up, last=False)
        if isinstance(first, ProviderResult):
            return first
        done = await exchange(first, last=True)  # once (OpenRouter's image-only modalities)
        assert isinstance(done, ProviderResult)
        return done

    outcomes = await asyncio.gather(*(one(up) for up in encoded), return_exceptions=True)
    results = [o for o in outcomes if isinstance(o, ProviderResult)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    for error in errors:
        if not isinstance(error, Exception):
            raise error
        if not isinstance(error, GatewayError):  # a bug, not a provider answer: keep the trace
            log.error("provider_call_failed", exc_info=error)
    if not results:
        raise errors[0]
    counts = split_n(req.n, adapter.capabilities.images_per_call)
    lost = sum(counts[i] for i, o in enumerate(outcomes) if isinstance(o, BaseException))
    return results, lost


async def _slices(body: bytes, size: int = 64 * 1024) -> AsyncIterator[memoryview]:
    view = memoryview(body)
    for start in range(0, len(view), size):
        yield view[start:start + size]


class _AnswerIds(msgspec.Struct):
    """Top-level ids a provider's answer carries: Z.AI `request_id`, Gemini `responseId`,
    OpenRouter `id` (`gen-…`); the base64 beside them is skipped, not decoded."""

    request_id: str | None = None
    responseId: str | None = None  # noqa: N815 (Gemini's own spelling)
    id: str | None = None


_answer_ids = msgspec.json.Decoder(_AnswerIds)


def answer_id(body: bytes) -> str | None:
    if not body.startswith(b"{"):
        return None
    try:
        found = _answer_ids.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return found.request_id or found.responseId or found.id


def sum_usage(results: Sequence[ProviderResult]) -> Usage | None:
    usages = [r.usage for r in results if r.usage is not None]
    if not usages:
        return None
    total = Usage()
    for u in usages:
        total.input_tokens += u.input_tokens
        total.output_tokens += u.output_tokens
        total.total_tokens += u.total_tokens
        for name in ("input_tokens_details", "output_tokens_details"):
            detail = getattr(u, name)
            if detail is not msgspec.UNSET:
                merged = getattr(total, name) or {}
                merged = {} if merged is msgspec.UNSET else merged
                for k, v in detail.items():
                    merged[k] = merged.get(k, 0) + v
                setattr(total, name, merged)
        if u.generated_images is not msgspec.UNSET:
            prev = 0 if total.generated_images is msgspec.UNSET else total.generated_images
            total.generated_images = prev + u.generated_images
    return total


async def produce(gw: Gateway, request: web.Request, state: ProviderState, req: ImageRequest,
                  encoded: list[UpstreamRequest], double: TestDouble | None = None) -> Produced:
    """Calls the provider, then normalises its images into the client's answer."""
    results, lost = await call_provider(gw.upstream, state, req, encoded, double)
    lost += sum(r.failed for r in results)
    # a provider that answers more images than asked (an OpenRouter model replying with two)
    # still gives the client exactly n
    generated = [img for r in results for img in r.images][: req.n]
    if not generated:
        raise GatewayError("no_image", "The provider answered without an image.")
    base = gw.base_url(request)
    done = state.adapter.capabilities.formats
    outcomes = await asyncio.gather(*(gw.finisher.image(img, req, base, done)
                                      for img in generated), return_exceptions=True)
    data = [o for o in outcomes if not isinstance(o, BaseException)]
    partials = [img.partials or [] for img, o in zip(generated, outcomes, strict=True)
                if not isinstance(o, BaseException)]
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    for error in failures:
        if not isinstance(error, Exception):
            raise error  # cancellation
    if not data:
        raise failures[0]  # an image that failed to download does not sink the others
    created = max(r.created for r in results) or int(time.time())
    usage = sum_usage(results)
    said = results[0]  # what the provider reports making (gpt-image-1's answer fields)
    unset = msgspec.UNSET
    body = ImagesResponse(created=created, data=data,
                          usage=usage if usage is not None else unset,
                          size=said.size or unset, quality=said.quality or unset,
                          background=said.background or unset,
                          output_format=said.output_format or unset)
    return Produced(body, req.n - len(data), partials=partials if any(partials) else None)


def parts(produced: Produced) -> tuple[ImagesResponse, int, dict[str, str]]:
    return produced.body, produced.failed, {}


def _dropped_header(dropped: tuple[str, ...]) -> dict[str, str]:
    """Names the client sent (any bytes, any count): encoded and bounded, `a,b,+N more`."""
    return {"x-imagegate-dropped-params": header_list(dropped)} if dropped else {}


async def answer(gw: Gateway, request: web.Request, route: RouteState, req: ImageRequest,
                 answer_headers: Mapping[str, str]) -> Answer:
    """One adapted route's answer: JSON, or (stream: true) keep-alives then one completed
    event per image."""
    state = gw.upstream.providers[route.provider]
    encoded, dropped = prepare(state, req, request.get(BUDGET))
    headers = {**_dropped_header(dropped), **answer_headers}
    work = produce(gw, request, state, req, encoded, route.double)
    if req.stream:
        kind = "image_edit" if req.operation == "edit" else "image_generation"
        streamed = await sse.stream_images(
            request, work, parts, headers, kind, req, gw.config.server.stream_keepalive_s,
            partials=lambda p: p.partials)
        if streamed.result is None:
            return Answer(streamed.response, 0)
        return Answer(streamed.response, streamed.result.images, streamed.result.usage)
    produced = await work
    if produced.failed:
        headers["x-imagegate-failed-images"] = str(produced.failed)
    return Answer(json_response(produced.body, headers), produced.images, produced.usage)


async def attempt_streamed(gw: Gateway, request: web.Request, route: RouteState,
                           req: ImageRequest, headers: dict[str, str]) -> Produced:
    """One attempt inside an event stream already begun (it falls back over adapted routes
    only): `headers` are the stream's, still unsent while no byte has gone out."""
    state = gw.upstream.providers[route.provider]
    if state.adapter.passthrough:
        raise Unsuitable()  # an event stream already begun continues on adapted routes only
    encoded, dropped = prepare(state, req, request.get(BUDGET))
    headers.pop("x-imagegate-dropped-params", None)
    headers.update(_dropped_header(dropped))
    return await produce(gw, request, state, req, encoded, route.double)
