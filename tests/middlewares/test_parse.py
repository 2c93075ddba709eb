"""The parse middleware alone, on an inline app: one typed result for JSON and multipart heads."""
from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from imagegate.config.schema import Config
from imagegate.middlewares.auth import auth_middleware
from imagegate.middlewares.errors import errors_middleware
from imagegate.middlewares.keys import PARSED
from imagegate.middlewares.parse import ModelTable, parse_middleware

from tests.conftest import make_config

CONFIG = make_config({"auth": {"keys": [
    {"id": "narrow", "key": "k-narrow", "models": ["local"]},
    {"id": "wide", "key": "k-wide"}]}}, models={
    "house": {"routes": [{"provider": "local"}], "aliases": ["casa"],
              "defaults": {"size": "64x64", "quality": "low"}}})


def app_for(config: Config) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        p = request[PARSED]
        if p.form is not None:  # the rest of the body is still there for the handler
            async for _ in p.form.rest():
                pass
        return web.json_response({
            "endpoint": p.endpoint, "model": p.public_model, "n": p.n, "stream": p.stream,
            "size": p.body.size, "filled": p.filled, "raw": p.raw is not None,
            "form": p.form is not None, "prompt": p.body.prompt, "rewritten": p.rewritten})

    app = web.Application(middlewares=[errors_middleware(), auth_middleware(config.auth),
                                       parse_middleware(config, ModelTable(config))])
    for path in ("generations", "edits", "variations"):
        app.router.add_post(f"/v1/images/{path}", echo)
    return app


WIDE = {"Authorization": "Bearer k-wide"}


async def test_json_body_alias_and_defaults(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for(CONFIG))
    resp = await client.post("/v1/images/generations", headers=WIDE,
                             json={"model": "casa", "prompt": "p", "n": 2, "stream": True})
    got = await resp.json()
    assert resp.status == 200
    assert got == {"endpoint": "generations", "model": "house", "n": 2, "stream": True,
                   "size": "64x64", "filled": {"size": "64x64", "quality": "low"},
                   "raw": True, "form": False, "prompt": "p", "rewritten": True}


async def test_multipart_head_is_read_up_to_the_first_file(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for(CONFIG))
    form = aiohttp.FormData()
    form.add_field("model", "local")
    form.add_field("prompt", "edit me")
    form.add_field("n", "3")
    form.add_field("image", b"\x89PNG\r\n\x1a\n" + b"0" * 32, filename="a.png",
                   content_type="image/png")
    resp = await client.post("/v1/images/edits", headers=WIDE, data=form)
    got = await resp.json()
    assert got["endpoint"] == "edits" and got["model"] == "local" and got["n"] == 3
    assert got["form"] and not got["raw"] and not got["rewritten"]


async def test_variations_need_no_prompt(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for(CONFIG))
    form = aiohttp.FormData()
    form.add_field("model", "local")
    form.add_field("image", b"\x89PNG\r\n\x1a\n" + b"0" * 32, filename="a.png",
                   content_type="image/png")
    got = await (await client.post("/v1/images/variations", headers=WIDE, data=form)).json()
    assert got["endpoint"] == "variations" and got["n"] == 1


async def test_the_keys_allowlist_is_checked_on_the_resolved_model(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for(CONFIG))
    resp = await client.post("/v1/images/generations", headers={
        "Authorization": "Bearer k-narrow"}, json={"model": "casa", "prompt": "p"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "model_not_allowed"


async def test_bad_heads_get_openai_errors_naming_the_param(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for(CONFIG))
    cases = [
        ({"json": {"prompt": "p", "model": "local", "n": 11}}, 400, "n"),
        ({"json": {"model": "local"}}, 400, "prompt"),
        ({"json": {"prompt": "p", "model": "nope"}}, 404, "model"),
        ({"json": {"prompt": "p", "model": "local", "size": "9000x9000"}}, 400, "size"),
        ({"data": b"prompt=p", "headers": {"Content-Type": "text/plain"}}, 400, None),
    ]
    for kwargs, status, param in cases:
        headers = {**WIDE, **kwargs.pop("headers", {})}
        resp = await client.post("/v1/images/generations", headers=headers, **kwargs)
        error = (await resp.json())["error"]
        assert (resp.status, error["param"]) == (status, param), error
