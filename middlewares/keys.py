"""Every key under which a middleware or handler keeps per-request or per-app state."""
from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.api import Usage
from imagegate.config.schema import ApiKey, Config, ModelConfig, Route


class Routed(msgspec.Struct):
    """A JSON images request once decoded and routed to a public model."""

    public_model: str
    model_config: ModelConfig
    body: Any  # ImageGenerateRequest | ImageEditJSONRequest, defaults applied
    raw: bytes  # the body exactly as the client sent it
    rewritten: bool  # alias resolved, model missing, or defaults filled: the bytes must change
    defaults: dict[str, Any]


class ParsedRequest(msgspec.Struct):
    """An images POST once its head is read: routed to a public model, defaults filled."""

    endpoint: str  # "generations" | "edits" | "variations"
    public_model: str
    model_config: ModelConfig
    n: int  # >= 1, after defaults
    stream: bool
    body: Any  # typed fields Struct (config/api.py), defaults applied
    raw: bytes | None  # the JSON body exactly as sent; None for multipart
    form: Any = None  # multipart: head fields + the rest of the body still to read/stream


class Outcome(msgspec.Struct):
    """The route that answered and what it delivered."""

    provider: str
    route: Route
    provider_model: str
    images: int  # images actually delivered to the client
    usage: Usage | None
    size: str | None  # as the request asked (after defaults)
    quality: str | None
    attempts: int


CONFIG = web.AppKey("config", Config)

REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)  # absent on an open gateway
KEY_ID = web.RequestKey("key_id", str)  # label and log value: the key's id, never the secret
MODEL = web.RequestKey("model", str)  # the public model name, once it is known and configured
PROVIDER = web.RequestKey("provider", str)  # the provider name of the route that answered
IMAGES = web.RequestKey("images", int)  # images in the answer
PROMPT = web.RequestKey("prompt", str)  # set only when server.log_prompts is true
ROUTED = web.RequestKey("routed", Routed)  # set by the rewrite middleware for JSON bodies
PARSED = web.RequestKey("parsed", ParsedRequest)  # set by the parse middleware
OUTCOME = web.RequestKey("outcome", Outcome)  # set by the dispatch loop when a route answered
COST = web.RequestKey("cost_usd", float)  # the answer's cost, when its route has a price
USAGE_HEADERS = web.RequestKey("usage_headers", dict)  # x-ratelimit-*, budget, cost headers
