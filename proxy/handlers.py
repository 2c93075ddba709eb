"""The endpoints: parse and check each request, then hand it to proxy/dispatch.py."""
from __future__ import annotations

import asyncio
import os

import msgspec
from aiohttp import web
from imagegate.adapters.base import ImageRequest, InputImage, Operation
from imagegate.config.api import ImageEditForm, ImageEditJSONRequest, ImageURL, Model, ModelList
from imagegate.config.errors import GatewayError
from imagegate.middlewares.auth import allowed_models, check_model_allowed
from imagegate.middlewares.keys import MODEL, PROMPT, ROUTED, Routed
from imagegate.middlewares.rewrite import (
    PROMPT_LOG_CHARS,
    apply_defaults,
    check_fields,
    validation_error,
)
from imagegate.proxy import forms
from imagegate.proxy.dispatch import (
    Unsuitable,
    forward_collected,
    forward_json,
    forward_multipart,
    image_request,
    serve,
    unknown_fields,
    unknown_json_fields,
)
from imagegate.proxy.gateway import GATEWAY, Gateway
from imagegate.proxy.routing import RouteState

_models_cache: dict[tuple[str, ...], bytes] = {}  # key: the names a caller may use


async def generations(request: web.Request) -> web.StreamResponse:
    routed: Routed = request[ROUTED]
    body = routed.body

    async def make(route: RouteState) -> ImageRequest:
        unknown = unknown_json_fields(routed.raw, type(body))
        return image_request("generate", body, route, [], None, unknown)

    async def native(route: RouteState) -> web.StreamResponse:
        return await forward_json(request, route, "/images/generations")

    return await serve(request, routed.public_model, body, "image_generation", make, native)


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
        if loaded is None:  # data URLs decoded, http(s) URLs fetched safely, all at once
            try:
                refs = [(_url(ref, f"images[{i}]"), f"images[{i}]")
                        for i, ref in enumerate(body.images)]
                if body.mask is not None:
                    refs.append((_url(body.mask, "mask"), "mask"))
                found = list(await asyncio.gather(*(gw.fetcher.load_image(u, p)
                                                    for u, p in refs)))
            except GatewayError as error:  # an OpenAI route later in the plan reads them itself
                if error.code != "invalid_value":
                    raise
                raise Unsuitable(error) from None
            mask = found.pop() if body.mask is not None else None
            loaded = found, mask
        return loaded

    async def make(route: RouteState) -> ImageRequest:
        unknown = unknown_json_fields(routed.raw, type(body))
        return image_request("edit", body, route, *await load(), unknown)

    async def native(route: RouteState) -> web.StreamResponse:
        # forwarded as sent: OpenAI reads the URLs (and file_ids) itself
        return await forward_json(request, route, "/images/edits")

    return await serve(request, routed.public_model, body, "image_edit", make, native)


def _url(ref: ImageURL, param: str) -> str:
    if not ref.image_url:
        raise GatewayError("invalid_value", f"'{param}.image_url' is required (file_id works "
                           "only on OpenAI routes).", param=f"{param}.image_url")
    return ref.image_url


def parse_form_fields(fields: dict[str, str]) -> ImageEditForm:
    try:
        form = msgspec.convert(fields, ImageEditForm, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    check_fields(form)
    return form


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
    all_fields = dict(form.fields)

    async def make(route: RouteState) -> ImageRequest:
        nonlocal collected, fields
        if op is None:
            raise Unsuitable(GatewayError("invalid_value", f"The model '{public}' does not "
                                          "support variations.", param="model"))
        if collected is None:  # read into memory once: adapted routes can then be retried
            images_, mask, late = await forms.collect_files(form, check)
            collected = images_, mask
            all_fields.update(late)
            if late:  # fields sent after the files count too
                fields, _ = apply_defaults(parse_form_fields(all_fields), model_config.defaults)
        unknown = unknown_fields(all_fields, ImageEditForm.__struct_fields__)
        return image_request(op, fields, route, *collected, unknown)

    async def native(route: RouteState) -> web.StreamResponse | None:
        filled_text = {k: str(v) for k, v in filled.items()}
        if not form.consumed:
            return await forward_multipart(request, route, form, check, path, filled_text,
                                           fields)
        if collected is None:
            return None  # streamed to another upstream already: it cannot be sent twice
        return await forward_collected(request, route, path, {**all_fields, **filled_text},
                                       *collected, fields)

    # a body streamed upstream cannot be sent twice; one read into memory can
    return await serve(request, public, fields, "image_edit", make, native,
                       replayable=lambda: collected is not None or not form.consumed)


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    names = tuple(allowed_models(request, gw.models.listed, gw.models.public_of))
    body = _models_cache.get(names)
    if body is None:
        body = _models_cache[names] = msgspec.json.encode(
            ModelList(data=[Model(id=n) for n in names]))
    return web.Response(body=body, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = request.match_info["model"]
    if name not in allowed_models(request, gw.models.listed, gw.models.public_of):
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
    return web.json_response({"status": "ok", "pid": os.getpid()})  # which worker answered


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ready, down = await gw.check_ready()
    if not ready:
        return web.json_response({"status": "unavailable",
                                  "reason": f"{' and '.join(down)} unreachable"}, status=503)
    if down:  # serving without it (state.on_redis_error: open)
        return web.json_response({"status": "degraded", "degraded": down})
    return web.json_response({"status": "ready"})
