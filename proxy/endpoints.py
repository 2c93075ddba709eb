"""The endpoints: images POSTs become a typed job for proxy/dispatch.py; models, hosted files,
health and readiness are answered here."""
from __future__ import annotations

import os
from pathlib import Path

import msgspec
from aiohttp import web
from imagegate.config.api import Model, ModelList
from imagegate.config.errors import GatewayError
from imagegate.middlewares.auth import allowed_models
from imagegate.middlewares.keys import PARSED
from imagegate.proxy.dispatch import dispatch
from imagegate.proxy.drain import DRAIN
from imagegate.proxy.gateway import gateway_of
from imagegate.proxy.jobs import job_for


async def images(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/{generations,edits,variations}: the parse middleware has read the head."""
    gw = gateway_of(request)
    parsed = request.get(PARSED)
    if parsed is None:  # only when the chain was built without the parse middleware
        raise GatewayError("server_error", "The request was not parsed.")
    return await dispatch(gw, job_for(gw, request, parsed))


async def list_models(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    names = tuple(allowed_models(request, gw.models.listed, gw.models.public_of))
    body = gw.model_lists.get(names)
    if body is None:
        body = gw.model_lists[names] = msgspec.json.encode(
            ModelList(data=[Model(id=n) for n in names]))
    return web.Response(body=body, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    name = request.match_info["model"]
    if name not in allowed_models(request, gw.models.listed, gw.models.public_of):
        raise GatewayError("model_not_found", f"The model '{name}' does not exist on this "
                           "gateway.", param="model")
    return web.Response(body=msgspec.json.encode(Model(id=name)), content_type="application/json")


async def hosted_file(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    found = await gw.store.open(request.match_info["name"], request.query.get("expires", ""),
                                request.query.get("sig", ""))
    if found is None:
        raise GatewayError("not_found", "This image link is invalid or has expired.")
    image, ctype = found
    headers = {"Content-Type": ctype, "Cache-Control": "private, max-age=300"}
    if isinstance(image, bytes):
        return web.Response(body=image, headers=headers)
    if isinstance(image, Path):
        return web.FileResponse(image, headers=headers)
    async with image:  # from the bucket: relayed chunk by chunk, never held whole
        response = web.StreamResponse(headers=headers)
        response.content_length = image.length
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in image.chunks():  # a bucket failing now cuts the connection
                await response.write(chunk)
        await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})  # which worker answered


async def readyz(request: web.Request) -> web.Response:
    if request.app[DRAIN].draining:  # a load balancer stops sending at once
        return web.json_response({"status": "draining"}, status=503)
    gw = gateway_of(request)
    ready, down = await gw.check_ready()
    if not ready:
        return web.json_response({"status": "unavailable",
                                  "reason": f"{' and '.join(down)} unreachable"}, status=503)
    if down:  # serving without it (state.on_redis_error: open)
        return web.json_response({"status": "degraded", "degraded": down})
    return web.json_response({"status": "ready"})
