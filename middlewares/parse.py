"""Request parsing (DESIGN's "rewrite" step): the head of every images POST read once (JSON whole,
a multipart form up to its first file), the model and its aliases resolved, the key's allowlist
checked and the model's defaults filled, handed on as one `ParsedRequest`."""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.api import (
    DEFAULT_MODEL,
    ImageEditForm,
    ImageEditJSONRequest,
    ImageGenerateRequest,
)
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config, ModelConfig
from imagegate.middlewares.auth import check_model_allowed
from imagegate.middlewares.forms import Form, read_form
from imagegate.middlewares.jsonshape import check_json_shape
from imagegate.middlewares.keys import PARSED, ParsedRequest, record_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# path -> (endpoint, the JSON body type or None, whether multipart is accepted)
ENDPOINTS: dict[str, tuple[str, type[Any] | None, bool]] = {
    "/v1/images/generations": ("generations", ImageGenerateRequest, False),
    "/v1/images/edits": ("edits", ImageEditJSONRequest, True),
    "/v1/images/variations": ("variations", None, True),
}
_SIZE = re.compile(r"auto|[1-4]K|([1-9][0-9]{0,3})x([1-9][0-9]{0,3})")
_AT = re.compile(r" - at `\$\.?(.*)`$")
MAX_SIDE = 4096
PROMPT_LOG_CHARS = 1000
VARIATION_PROMPT = "variation"  # variations have no prompt; adapters never see one


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
    """Checks msgspec's types cannot express (JSON and multipart bodies alike)."""
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
    if not defaults:  # (most models: no comprehension to run)
        return body, {}
    fields = body.__struct_fields__  # an edit form has no `style`: such defaults do not apply
    filled = {k: v for k, v in defaults.items() if k in fields and getattr(body, k) is None}
    return (msgspec.structs.replace(body, **filled) if filled else body), filled


class BodyDecoders:
    """One msgspec decoder per body type, built once."""

    def __init__(self) -> None:
        self._decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}

    def decode(self, raw: bytes, typ: type[Any]) -> Any:
        decoder = self._decoders.get(typ)
        if decoder is None:
            decoder = self._decoders[typ] = msgspec.json.Decoder(typ)
        check_json_shape(raw)  # nesting and repeated keys, before msgspec recurses
        try:
            if not raw.isascii():  # skipped unknown keys are not checked by msgspec
                raw.decode("utf-8")
            body = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise GatewayError(
                "invalid_value", "We could not parse the JSON body of your request."
            ) from None
        check_fields(body)
        return body


def parse_form_fields(fields: dict[str, str]) -> ImageEditForm:
    """The text fields of a multipart form, typed (strings converted as the SDK sends them)."""
    try:
        form = msgspec.convert(fields, ImageEditForm, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    check_fields(form)
    return form


def parse_middleware(config: Config, table: ModelTable) -> Callable[..., Awaitable[Any]]:
    log_prompts = config.server.log_prompts
    max_bytes = config.server.max_request_bytes
    decoders = BodyDecoders()

    def parsed(request: web.Request, endpoint: str, body: Any, raw: bytes | None,
               form: Form | None) -> ParsedRequest:
        public, model_config = table.resolve(body.model)
        record = record_of(request)
        record.model = public
        check_model_allowed(request, public)
        body, filled = apply_defaults(body, model_config.defaults)
        if log_prompts:
            record.prompt = body.prompt[:PROMPT_LOG_CHARS]
        return ParsedRequest(endpoint, public, model_config, body.n or 1, bool(body.stream),
                             body, raw, form, filled)

    @web.middleware
    async def parse_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        found = ENDPOINTS.get(request.path)
        if found is None or request.method != "POST":
            return await handler(request)
        endpoint, json_type, multipart = found
        ctype = request.content_type
        if json_type is not None and ctype == "application/json":
            raw = await request.read()  # client_max_size turns an oversize body into 413 here
            request[PARSED] = parsed(request, endpoint, decoders.decode(raw, json_type), raw,
                                     None)
            return await handler(request)
        if not multipart or ctype != "multipart/form-data":
            raise GatewayError("invalid_value", _wrong_type(endpoint))
        needed = ("model",) if endpoint == "variations" else ("model", "prompt")
        form = await read_form(request, max_bytes, needed)
        try:
            if endpoint == "variations":
                form.fields.setdefault("prompt", VARIATION_PROMPT)
            body = parse_form_fields(form.fields)
            request[PARSED] = parsed(request, endpoint, body, None, form)
            return await handler(request)
        finally:
            form.close()

    return parse_mw


def _wrong_type(endpoint: str) -> str:
    if endpoint == "generations":
        return "Send the request body as JSON (Content-Type: application/json)."
    if endpoint == "edits":
        return "Send the edit as multipart/form-data or as JSON."
    return "Send the variation as multipart/form-data."
