"""Request rewriting: JSON bodies decoded once, model aliases resolved, model `defaults` filled."""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.api import DEFAULT_MODEL, ImageEditJSONRequest, ImageGenerateRequest
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config, ModelConfig
from imagegate.middlewares.auth import check_model_allowed
from imagegate.middlewares.keys import MODEL, PROMPT, ROUTED, Routed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_BODIES: dict[str, type[ImageGenerateRequest]] = {
    "/v1/images/generations": ImageGenerateRequest,
    "/v1/images/edits": ImageEditJSONRequest,
}
_SIZE = re.compile(r"auto|[1-4]K|([1-9][0-9]{0,3})x([1-9][0-9]{0,3})")
_AT = re.compile(r" - at `\$\.?(.*)`$")
MAX_SIDE = 4096
PROMPT_LOG_CHARS = 1000


class ModelTable:
    """Public model names and aliases -> (public name, config); built once."""

    def __init__(self, config: Config) -> None:
        self.names: dict[str, tuple[str, ModelConfig]] = {}
        for name, model in config.models.items():
            for alias in (name, *model.aliases):
                self.names[alias] = (name, model)
        self.public = list(config.models)
        self.listed = list(self.names)  # public names and their aliases
        self.public_of = {alias: found[0] for alias, found in self.names.items()}

    def resolve(self, requested: str | None) -> tuple[str, ModelConfig]:
        found = self.names.get(requested or DEFAULT_MODEL)
        if found is None:
            raise GatewayError(
                "model_not_found",
                f"The model '{requested or DEFAULT_MODEL}' does not exist on this gateway.",
                param="model",
            )
        return found


def validation_error(exc: msgspec.ValidationError) -> GatewayError:
    text = str(exc)
    m = _AT.search(text)
    param = m.group(1) if m else None
    if text.startswith("Object missing required field"):
        param = text.split("`")[1]
        path = m.group(1) if m and m.group(1) else ""
        param = f"{path}.{param}" if path else param
        return GatewayError("invalid_value", f"Missing required parameter: '{param}'.", param=param)
    detail = text[: m.start()] if m else text
    where = f" for '{param}'" if param else ""
    return GatewayError("invalid_value", f"Invalid value{where}: {detail}.", param=param)


def check_fields(body: Any) -> None:
    """Checks msgspec's types cannot express (shared by JSON and multipart bodies)."""
    size = body.size
    if size is not None:
        m = _SIZE.fullmatch(size)
        if m is None or (m.group(1) and max(int(m.group(1)), int(m.group(2))) > MAX_SIDE):
            raise GatewayError(
                "invalid_value",
                f"Invalid value for 'size': {size!r}. Use 'auto' or 'WIDTHxHEIGHT' with "
                f"sides up to {MAX_SIDE}.",
                param="size",
            )
    if body.background == "transparent" and body.output_format == "jpeg":
        raise GatewayError(
            "invalid_value", "A transparent background needs output_format png or webp.",
            param="background",
        )


def apply_defaults(body: Any, defaults: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    fields = body.__struct_fields__  # an edit form has no `style`: such defaults do not apply
    filled = {k: v for k, v in defaults.items() if k in fields and getattr(body, k) is None}
    return (msgspec.structs.replace(body, **filled) if filled else body), filled


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode_body(raw: bytes, typ: type[Any]) -> Any:
    decoder = _DECODERS.get(typ)
    if decoder is None:
        decoder = _DECODERS[typ] = msgspec.json.Decoder(typ)
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise GatewayError(
            "invalid_value", "We could not parse the JSON body of your request."
        ) from None
    check_fields(body)
    return body


def rewrite_middleware(config: Config, table: ModelTable) -> Callable[..., Awaitable[Any]]:
    log_prompts = config.server.log_prompts
    @web.middleware
    async def rewrite_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        typ = JSON_BODIES.get(request.path)
        if typ is None or request.method != "POST":
            return await handler(request)
        if request.content_type != "application/json":
            if typ is ImageGenerateRequest:
                raise GatewayError("invalid_value", "Send the request body as JSON "
                                   "(Content-Type: application/json).")
            return await handler(request)  # edits may be multipart: the handler reads those
        raw = await request.read()  # client_max_size turns an oversize body into 413 here
        body = decode_body(raw, typ)
        public, model_config = table.resolve(body.model)
        request[MODEL] = public
        check_model_allowed(request, public)
        body, filled = apply_defaults(body, model_config.defaults)
        if log_prompts:
            request[PROMPT] = body.prompt[:PROMPT_LOG_CHARS]
        rewritten = bool(filled) or body.model != public
        request[ROUTED] = Routed(public, model_config, body, raw, rewritten, filled)
        return await handler(request)

    return rewrite_mw
