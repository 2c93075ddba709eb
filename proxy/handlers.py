"""The endpoints: route each request, forward (native) or adapt, and answer in OpenAI's shape."""
from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from adapters.base import ImageRequest, InputImage, Operation, sniff_mime
from config.api import ImageEditJSONRequest, ImagesResponse, Model, ModelList
from config.errors import GatewayError
from middlewares.auth import allowed_models, check_model_allowed
from middlewares.keys import IMAGES, MODEL, PROMPT, PROVIDER, ROUTED
from middlewares.rewrite import (
    PROMPT_LOG_CHARS,
    Routed,
    apply_defaults,
    check_fields,
    validation_error,
)
from proxy import forms, images, sse
from proxy.gateway import GATEWAY, Gateway
from proxy.relay import relay, rewrite_json, usage_of
from proxy.routing import RouteState
from proxy.upstream import ProviderState

RETRYABLE = frozenset({"upstream_unavailable", "upstream_timeout", "upstream_auth_failed",
                       "upstream_rate_limited", "upstream_busy"})
Attempt = Callable[[RouteState, ProviderState], Awaitable[Any]]
GPT_IMAGE_MODELS = ("gpt-image", "chatgpt-image")
_models_cache: dict[tuple[str, ...], bytes] = {}


class EditForm(msgspec.Struct, kw_only=True):
    """Text fields of a multipart edit, converted from strings (`strict=False`)."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    background: str | None = None
    input_fidelity: str | None = None
    moderation: str | None = None
    partial_images: int | None = None
    stream: bool | None = None
    user: str | None = None
    seed: int | None = None


async def dispatch(request: web.Request, plan: list[RouteState], attempt: Attempt,
                   replayable: Callable[[], bool] = lambda: True) -> Any:
    """Tries the routes in order; an attempt answering None cannot serve the request (skipped);
    a body already streamed upstream is never sent twice."""
    gw = request.app[GATEWAY]
    last: GatewayError | None = None
    tried = 0
    for route in plan:
        state = gw.upstream.providers[route.provider]
        if tried:
            gw.metrics.child(gw.metrics.retries, route.provider).inc()
        try:
            result = await attempt(route, state)
        except GatewayError as error:
            if error.code not in RETRYABLE:
                raise
            tried += 1
            if error.code != "upstream_busy":  # our own cap, not the route's health
                gw.router.failed(route)
            last = error
            if not replayable():
                break
            continue
        if result is None:
            continue
        gw.router.succeeded(route)
        request[PROVIDER] = route.provider
        return result
    raise last or GatewayError("upstream_unavailable", "No route of this model can serve this "
                               "request.")


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
        images.check_capabilities(state, req)
        encoded, dropped = images.encode_calls(state, req)
        if req.partial_images:
            dropped = (*dropped, "partial_images")  # one completed event per image
        headers.pop("x-imagegate-dropped-params", None)
        if dropped:
            headers["x-imagegate-dropped-params"] = ",".join(dropped)
        return await produce(request, route, state, req, encoded)

    return await sse.stream_images(request, dispatch(request, plan, attempt), headers, kind,
                                   template, gw.config.server.stream_keepalive_s)


def image_request(op: Operation, body: Any, route: RouteState, images_: list[InputImage],
                  mask: InputImage | None) -> ImageRequest:
    r = route.route
    return ImageRequest(
        operation=op, model=route.model, prompt=body.prompt, n=body.n or 1, size=body.size,
        quality=body.quality, response_format=body.response_format or "b64_json",
        output_format=body.output_format, output_compression=body.output_compression,
        background=body.background, style=getattr(body, "style", None),
        moderation=body.moderation, input_fidelity=getattr(body, "input_fidelity", None),
        user=body.user, seed=body.seed, stream=bool(body.stream),
        partial_images=body.partial_images, images=images_, mask=mask,
        watermark=r.watermark, image_only=r.image_only,
    )


async def answer_adapted(request: web.Request, route: RouteState, state: ProviderState,
                         req: ImageRequest) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    images.check_capabilities(state, req)
    encoded, dropped = images.encode_calls(state, req)
    if req.stream and req.partial_images:
        dropped = (*dropped, "partial_images")  # one completed event per image, no partials
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
    data = list(await asyncio.gather(*(gw.finisher.image(img, req, base, done)
                                       for img in generated)))
    created = max(r.created for r in results) or int(time.time())
    usage = images.sum_usage(results)
    body = ImagesResponse(created=created, data=data,
                          usage=usage if usage is not None else msgspec.UNSET)
    gw.count_images(request[MODEL], route.provider, len(data), usage)
    request[IMAGES] = len(data)
    return body, req.n - len(data)  # images asked for and not delivered


async def generations(request: web.Request) -> web.StreamResponse:
    routed: Routed = request[ROUTED]
    body = routed.body

    async def make(route: RouteState) -> ImageRequest:
        return image_request("generate", body, route, [], None)

    async def native(route: RouteState) -> web.StreamResponse:
        return await forward_json(request, route, "/images/generations")

    return await serve(request, routed.public_model, body, "image_generation", make, native)


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
    async with gw.upstream.attempt(route.provider, route.model, path, data=raw,
                                   headers={"Content-Type": "application/json"},
                                   stream=stream) as resp:
        if hosted and wants == "url" and resp.status == 200 and not stream:
            response: web.StreamResponse = await host_images(request, await resp.read())
        else:
            response = await relay(request, resp, route.provider, stream=stream)
    if response.status == 200 and not stream:
        n = routed.body.n or 1
        body = response.body if isinstance(response, web.Response) else None
        usage = usage_of(body) if isinstance(body, bytes) else None
        gw.count_images(routed.public_model, route.provider, n, usage)
        request[IMAGES] = n
    return response


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
            data = base64.b64decode(item.b64_json)
            mime = sniff_mime(data[:16])
            if mime is None:
                raise images.bad_image()
            name, query = await gw.store.save(data, mime)
            item.url, item.b64_json = f"{base}/v1/images/files/{name}?{query}", msgspec.UNSET
    return images.json_response(answer, {})


async def edits(request: web.Request) -> web.StreamResponse:
    if request.content_type == "application/json":
        return await json_edit(request)
    if request.content_type != "multipart/form-data":
        raise GatewayError("invalid_value", "Send the edit as multipart/form-data or as JSON.")
    return await multipart_edit(request, "/images/edits", "edit")


async def variations(request: web.Request) -> web.StreamResponse:
    if request.content_type != "multipart/form-data":
        raise GatewayError("invalid_value", "Send the variation as multipart/form-data.")
    return await multipart_edit(request, "/images/variations", None)


async def json_edit(request: web.Request) -> web.StreamResponse:
    routed: Routed = request[ROUTED]
    body: ImageEditJSONRequest = routed.body
    gw = request.app[GATEWAY]
    most = gw.config.server.max_images_per_request
    if len(body.images) > most:
        raise GatewayError("invalid_value", f"Too many images: at most {most} may be sent.",
                           param="images")
    loaded: tuple[list[InputImage], InputImage | None] | None = None

    async def load() -> tuple[list[InputImage], InputImage | None]:
        nonlocal loaded
        if loaded is None:  # checked before the first call, native or not
            found = [await gw.fetcher.load_image(_url(ref, f"images[{i}]"), f"images[{i}]")
                     for i, ref in enumerate(body.images)]
            mask = None
            if body.mask is not None:
                mask = await gw.fetcher.load_image(_url(body.mask, "mask"), "mask")
            loaded = found, mask
        return loaded

    async def make(route: RouteState) -> ImageRequest:
        return image_request("edit", body, route, *await load())

    async def native(route: RouteState) -> web.StreamResponse:
        await load()
        return await forward_json(request, route, "/images/edits")

    return await serve(request, routed.public_model, body, "image_edit", make, native)


def _url(ref: Any, param: str) -> str:
    if not ref.image_url:
        raise GatewayError("invalid_value", f"'{param}.image_url' is required (file_id is not "
                           "supported by this gateway).", param=f"{param}.image_url")
    return ref.image_url


def parse_form_fields(fields: dict[str, str]) -> EditForm:
    try:
        form = msgspec.convert(fields, EditForm, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    if not form.prompt:
        raise GatewayError("invalid_value", "Missing required parameter: 'prompt'.",
                           param="prompt")
    if form.n is not None and not 1 <= form.n <= 10:
        raise GatewayError("invalid_value", "Invalid value for 'n': it must be between 1 and "
                           "10.", param="n")
    _check_choices(form)
    check_fields(form)
    return form


_CHOICES = {"response_format": ("url", "b64_json"), "output_format": ("png", "jpeg", "webp"),
            "background": ("transparent", "opaque", "auto"),
            "quality": ("auto", "low", "medium", "high", "standard", "hd")}


def _check_choices(form: EditForm) -> None:
    for name, choices in _CHOICES.items():
        value = getattr(form, name)
        if value is not None and value not in choices:
            raise GatewayError("invalid_value", f"Invalid value for '{name}': {value!r}.",
                               param=name)
    if form.output_compression is not None and not 0 <= form.output_compression <= 100:
        raise GatewayError("invalid_value", "Invalid value for 'output_compression'.",
                           param="output_compression")


async def multipart_edit(request: web.Request, path: str, op: Operation | None
                         ) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    needed = ("model", "prompt") if op is not None else ("model",)
    form = await forms.read_form(request, gw.config.server.max_request_bytes, needed)
    try:
        return await _multipart_edit(request, gw, form, path, op)
    finally:
        form.close()


async def _multipart_edit(request: web.Request, gw: Gateway, form: forms.Form, path: str,
                          op: Operation | None) -> web.StreamResponse:
    if op is None:
        form.fields.setdefault("prompt", "variation")
    fields = parse_form_fields(form.fields)
    if gw.config.server.log_prompts:
        request[PROMPT] = fields.prompt[:PROMPT_LOG_CHARS]
    public, model_config = gw.models.resolve(fields.model)
    request[MODEL] = public
    check_model_allowed(request, public)
    fields, filled = apply_defaults(fields, model_config.defaults)
    check = forms.FileCheck(gw.config.server.max_images_per_request)
    collected: tuple[list[InputImage], InputImage | None] | None = None

    async def make(route: RouteState) -> ImageRequest:
        nonlocal collected
        if op is None:
            raise GatewayError("invalid_value", f"The model '{public}' does not support "
                               "variations.", param="model")
        if collected is None:  # read into memory once: adapted routes can then be retried
            collected = await forms.collect_files(form, check)
        return image_request(op, fields, route, *collected)

    async def native(route: RouteState) -> web.StreamResponse | None:
        if form.consumed:
            return None  # the files were read for an adapter: nothing left to stream upstream
        return await forward_multipart(request, route, form, check, path,
                                       {k: str(v) for k, v in filled.items()}, fields)

    # a body streamed upstream cannot be sent twice; one read into memory can
    return await serve(request, public, fields, "image_edit", make, native,
                       replayable=lambda: collected is not None or not form.consumed)


async def forward_multipart(request: web.Request, route: RouteState, form: forms.Form,
                            check: forms.FileCheck, path: str, filled: dict[str, str],
                            fields: EditForm) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    extra = dict(filled)
    if "model" not in form.raw_fields and route.model != "dall-e-2":
        extra["model"] = route.model
    headers = {"Content-Type": request.headers["Content-Type"]}
    length = forms.forward_length(form, route.model, extra)
    if length is not None:
        headers["Content-Length"] = str(length)  # some upstreams refuse chunked uploads
    body = forms.forward_body(form, check, route.model, extra)
    stream = bool(fields.stream)
    try:
        async with gw.upstream.attempt(route.provider, route.model, path, data=body,
                                       headers=headers, stream=stream) as resp:
            response = await relay(request, resp, route.provider, stream=stream)
    except GatewayError:
        if check.error is not None:
            raise check.error from None
        raise
    if check.error is not None:
        raise check.error
    if response.status == 200 and not stream:
        gw.count_images(request[MODEL], route.provider, fields.n or 1, None)
        request[IMAGES] = fields.n or 1
    return response


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    names = tuple(allowed_models(request, gw.models.public))
    body = _models_cache.get(names)
    if body is None:
        body = _models_cache[names] = msgspec.json.encode(
            ModelList(data=[Model(id=n) for n in names]))
    return web.Response(body=body, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = request.match_info["model"]
    if name not in allowed_models(request, gw.models.public):
        raise GatewayError("model_not_found", f"The model '{name}' does not exist on this "
                           "gateway.", param="model")
    return web.Response(body=msgspec.json.encode(Model(id=name)), content_type="application/json")


async def hosted_file(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    found = await gw.store.open(request.match_info["name"], request.query.get("expires", ""),
                                request.query.get("sig", ""))
    if found is None:
        raise GatewayError("not_found", "This image link is invalid or has expired.")
    image, ctype = found
    headers = {"Content-Type": ctype, "Cache-Control": "private, max-age=300"}
    if isinstance(image, bytes):
        return web.Response(body=image, headers=headers)
    return web.FileResponse(image, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    problem = await gw.check_ready()
    if problem:
        return web.json_response({"status": "unavailable", "reason": problem}, status=503)
    return web.json_response({"status": "ready"})
