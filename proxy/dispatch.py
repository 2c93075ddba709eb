"""Answering one images request: route order and fallback, forwarding, adapting, streaming."""
from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from imagegate.adapters.base import ImageRequest, InputImage, Operation, sniff_mime
from imagegate.config.api import ImagesResponse
from imagegate.config.errors import GatewayError
from imagegate.middlewares.keys import IMAGES, MODEL, PROVIDER, ROUTED, Routed
from imagegate.proxy import forms, images, sse
from imagegate.proxy.gateway import GATEWAY
from imagegate.proxy.relay import relay, rewrite_json, usage_of
from imagegate.proxy.routing import RouteState, provider_failed
from imagegate.proxy.upstream import AnswerBroken, ProviderState

Attempt = Callable[[RouteState, ProviderState], Awaitable[Any]]


GPT_IMAGE_MODELS = ("gpt-image", "chatgpt-image")


async def dispatch(request: web.Request, plan: list[RouteState], attempt: Attempt,
                   replayable: Callable[[], bool] = lambda: True) -> Any:
    """Tries the routes in order; an attempt answering None cannot serve the request (skipped);
    a body already streamed upstream is never sent twice."""
    gw = request.app[GATEWAY]
    last: GatewayError | None = None
    refused: GatewayError | None = None
    failures = 0
    tried: list[RouteState] = []
    try:
        for route in plan:
            if not gw.router.admit(route):  # half-open, its one probe already out
                continue
            tried.append(route)
            state = gw.upstream.providers[route.provider]
            try:
                result = await attempt(route, state)
            except Unsuitable as skip:  # this route cannot do what was asked; another may
                refused = refused or skip.error
                continue
            except AnswerBroken as broken:  # the route failed, but the answer was going out
                await fail(gw, route, None)
                request[PROVIDER] = route.provider
                return broken.response
            except GatewayError as error:
                if not provider_failed(error):  # the client's, or the gateway's own
                    raise
                if failures:
                    gw.metrics.child(gw.metrics.retries, route.provider).inc()
                failures += 1
                await fail(gw, route, error)
                last = error
                if not replayable():
                    break
                continue
            if result is None:
                continue
            if failures:
                gw.metrics.child(gw.metrics.retries, route.provider).inc()
            gw.router.succeeded(route)
            request[PROVIDER] = route.provider
            return result
    finally:
        gw.router.release(tried)  # a probe not settled (hang-up, storage) is free again
    raise last or refused or GatewayError("upstream_unavailable", "No route of this model can "
                                          "serve this request.")


async def fail(gw: Any, route: RouteState, error: GatewayError | None) -> None:
    rested = gw.router.failed(route, error)
    if rested:
        await gw.share_rest(route, rested)


class Unsuitable(Exception):
    """A route that cannot honour the request (a mask, an edit, a size): try the next one."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def prepare(state: ProviderState, req: ImageRequest) -> tuple[list[Any], tuple[str, ...]]:
    """The provider requests of one route, checked before anything is sent."""
    try:
        images.check_capabilities(state, req)
        encoded, dropped = images.encode_calls(state, req)
    except GatewayError as error:
        if error.code != "invalid_value":
            raise
        raise Unsuitable(error) from None
    if req.stream and req.partial_images:
        dropped = (*dropped, "partial_images")  # one completed event per image, no partials
    return encoded, (*dropped, *req.unknown)


Make = Callable[[RouteState], Awaitable[ImageRequest]]


Native = Callable[[RouteState], Awaitable[web.StreamResponse | None]]


async def serve(request: web.Request, public: str, body: Any, kind: str, make: Make,
                native: Native, replayable: Callable[[], bool] = lambda: True
                ) -> web.StreamResponse:
    """Routes one images request: OpenAI routes forward, others adapt; streams keep falling
    back over adapted routes while keep-alives flow."""
    gw = request.app[GATEWAY]
    plan = gw.router.plan(public)
    if body.stream and not gw.upstream.providers[plan[0].provider].adapter.native:
        return await stream_adapted(request, plan, make, kind)

    async def attempt(route: RouteState, state: ProviderState) -> web.StreamResponse | None:
        if state.adapter.native:
            return await native(route)
        return await answer_adapted(request, route, state, await make(route))

    response: web.StreamResponse = await dispatch(request, plan, attempt, replayable)
    return response


async def stream_adapted(request: web.Request, plan: list[RouteState], make: Make,
                         kind: str) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    headers: dict[str, str] = {}
    template = await make(plan[0])

    async def attempt(route: RouteState, state: ProviderState) -> Any:
        if state.adapter.native:
            return None  # an event stream already begun continues on adapted routes only
        req = await make(route)
        encoded, dropped = prepare(state, req)
        headers.pop("x-imagegate-dropped-params", None)
        if dropped:
            headers["x-imagegate-dropped-params"] = ",".join(dropped)
        return await produce(request, route, state, req, encoded)

    return await sse.stream_images(request, dispatch(request, plan, attempt), headers, kind,
                                   template, gw.config.server.stream_keepalive_s)


_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def unknown_fields(names: Any, known: Any) -> tuple[str, ...]:
    """Request fields outside the OpenAI schema: forwarded as sent to OpenAI, named as dropped
    elsewhere (never silently lost)."""
    return tuple(sorted(set(names) - set(known)))


def unknown_json_fields(raw: bytes, typ: type[Any]) -> tuple[str, ...]:
    return unknown_fields(_raw_fields.decode(raw), typ.__struct_fields__)


def image_request(op: Operation, body: Any, route: RouteState, images_: list[InputImage],
                  mask: InputImage | None, unknown: tuple[str, ...] = ()) -> ImageRequest:
    r = route.route
    return ImageRequest(
        operation=op, model=route.model, prompt=body.prompt, n=body.n or 1, size=body.size,
        quality=body.quality, response_format=body.response_format or "b64_json",
        output_format=body.output_format, output_compression=body.output_compression,
        background=body.background, style=getattr(body, "style", None),
        moderation=body.moderation, input_fidelity=getattr(body, "input_fidelity", None),
        user=body.user, seed=body.seed, stream=bool(body.stream),
        partial_images=body.partial_images, images=images_, mask=mask,
        watermark=r.watermark, image_only=r.image_only, unknown=unknown,
    )


async def answer_adapted(request: web.Request, route: RouteState, state: ProviderState,
                         req: ImageRequest) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    encoded, dropped = prepare(state, req)
    headers = {"x-imagegate-dropped-params": ",".join(dropped)} if dropped else {}
    work = produce(request, route, state, req, encoded)
    if req.stream:
        kind = "image_edit" if req.operation == "edit" else "image_generation"
        return await sse.stream_images(request, work, headers, kind, req,
                                       gw.config.server.stream_keepalive_s)
    body, failed = await work
    if failed:
        headers["x-imagegate-failed-images"] = str(failed)
    return images.json_response(body, headers)


async def produce(request: web.Request, route: RouteState, state: ProviderState,
                  req: ImageRequest, encoded: list[Any]) -> tuple[ImagesResponse, int]:
    """Calls the provider, then normalises: the answer and how many images failed."""
    gw = request.app[GATEWAY]
    results = await images.call_provider(gw.upstream, state, req, encoded)
    # a provider that answers more images than asked (an OpenRouter model replying with two)
    # still gives the client exactly n
    generated = [img for r in results for img in r.images][: req.n]
    if not generated:
        raise GatewayError("no_image", "The provider answered without an image.")
    base = gw.public_base_url or f"{request.scheme}://{request.host}"
    done = state.adapter.capabilities.formats
    outcomes = await asyncio.gather(*(gw.finisher.image(img, req, base, done)
                                      for img in generated), return_exceptions=True)
    data = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    for error in lost:
        if not isinstance(error, Exception):
            raise error  # cancellation
    if not data:
        raise lost[0]  # an image that failed to download does not sink the others
    created = max(r.created for r in results) or int(time.time())
    usage = images.sum_usage(results)
    body = ImagesResponse(created=created, data=data,
                          usage=usage if usage is not None else msgspec.UNSET)
    gw.count_images(request[MODEL], route.provider, len(data), usage)
    request[IMAGES] = len(data)
    return body, req.n - len(data)  # images asked for and not delivered


async def forward_json(request: web.Request, route: RouteState, path: str) -> web.StreamResponse:
    routed: Routed = request[ROUTED]
    gw = request.app[GATEWAY]
    raw = routed.raw
    # GPT image models answer only base64 and refuse `response_format`: the gateway keeps the
    # field to itself and hosts the images when the client asked for links
    wants = routed.body.response_format
    hosted = wants is not None and route.model.startswith(GPT_IMAGE_MODELS)
    if routed.rewritten or route.model != routed.public_model or hosted:
        drop = ("response_format",) if hosted else ()
        raw = rewrite_json(raw, route.model, routed.defaults, drop)
    stream = bool(routed.body.stream)
    completed = [0]
    async with gw.upstream.attempt(route.provider, route.model, path, data=raw,
                                   headers={"Content-Type": "application/json"},
                                   stream=stream) as resp:
        if hosted and wants == "url" and resp.status == 200 and not stream:
            response: web.StreamResponse = await host_images(request, await resp.read())
        else:
            response = await relay(request, resp, route.provider, stream=stream,
                                   completed=completed)
    count_native(request, route, response, routed.body.n, completed)
    return response


def count_native(request: web.Request, route: RouteState, response: web.StreamResponse,
                 n: int | None, completed: list[int]) -> None:
    """Images (and tokens, read from the answer's tail) of an OpenAI answer, for the metrics."""
    if response.status != 200:
        return
    gw = request.app[GATEWAY]
    body = response.body if isinstance(response, web.Response) else None
    usage = usage_of(body) if isinstance(body, bytes) else None
    count = completed[0] if response.prepared and completed[0] else n or 1
    gw.count_images(request[MODEL], route.provider, count, usage)
    request[IMAGES] = count


async def host_images(request: web.Request, raw: bytes) -> web.Response:
    """An OpenAI answer with base64 images, turned into signed gateway links."""
    gw = request.app[GATEWAY]
    try:
        answer = msgspec.json.decode(raw, type=ImagesResponse)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise GatewayError("upstream_unavailable", "The provider's answer was not "
                           "understood.") from None
    base = gw.public_base_url or f"{request.scheme}://{request.host}"
    for item in answer.data:
        if isinstance(item.b64_json, str):
            try:
                data = base64.b64decode(item.b64_json, validate=True)
            except ValueError:  # binascii.Error is a ValueError
                raise images.bad_image() from None
            mime = sniff_mime(data[:16])
            if mime is None:
                raise images.bad_image()
            name, query = await gw.store.save(data, mime)
            item.url, item.b64_json = f"{base}/v1/images/files/{name}?{query}", msgspec.UNSET
    return images.json_response(answer, {})


async def forward_multipart(request: web.Request, route: RouteState, form: forms.Form,
                            check: forms.FileCheck, path: str, filled: dict[str, str],
                            fields: Any) -> web.StreamResponse:
    extra = dict(filled)
    if "model" not in form.raw_fields and route.model != "dall-e-2":
        extra["model"] = route.model
    # as for JSON: GPT image models refuse `response_format` (when it came before the files,
    # where the gateway has read it, it is held back and `url` answers are hosted here)
    hosted = route.model.startswith(GPT_IMAGE_MODELS) and "response_format" in form.raw_fields
    drop = frozenset({"response_format"}) if hosted else frozenset()
    headers = {"Content-Type": request.headers["Content-Type"]}
    length = forms.forward_length(form, route.model, extra, drop)
    if length is not None:
        headers["Content-Length"] = str(length)  # some upstreams refuse chunked uploads
    body = forms.forward_body(form, check, route.model, extra, drop)
    try:
        response = await send_form(request, route, path, body, headers, fields, hosted)
    except GatewayError:
        if check.error is not None:
            raise check.error from None
        raise
    if check.error is not None:
        raise check.error
    return response


async def forward_collected(request: web.Request, route: RouteState, path: str,
                            text: dict[str, str], files: list[InputImage],
                            mask: InputImage | None, fields: Any) -> web.StreamResponse:
    """A form already read into memory (for an adapter that failed) sent on to an OpenAI route,
    rebuilt with aiohttp's multipart writer: same fields and files, the route's model."""
    hosted = route.model.startswith(GPT_IMAGE_MODELS) and "response_format" in text
    writer = aiohttp.MultipartWriter("form-data")
    for name, value in {**text, "model": route.model}.items():
        if not (hosted and name == "response_format"):
            writer.append(value).set_content_disposition("form-data", name=name)
    named = [("image" if len(files) == 1 else "image[]", f) for f in files]
    for name, image in named + ([("mask", mask)] if mask is not None else []):
        part = writer.append(image.data, {"Content-Type": image.mime})
        part.set_content_disposition("form-data", name=name, filename=image.filename)
    return await send_form(request, route, path, writer, {}, fields, hosted)


async def send_form(request: web.Request, route: RouteState, path: str, body: Any,
                    headers: dict[str, str], fields: Any, hosted: bool) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    stream = bool(fields.stream)
    completed = [0]
    async with gw.upstream.attempt(route.provider, route.model, path, data=body,
                                   headers=headers, stream=stream) as resp:
        if hosted and fields.response_format == "url" and resp.status == 200 and not stream:
            response: web.StreamResponse = await host_images(request, await resp.read())
        else:
            response = await relay(request, resp, route.provider, stream=stream,
                                   completed=completed)
    count_native(request, route, response, fields.n, completed)
    return response
