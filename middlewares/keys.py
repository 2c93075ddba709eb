"""Every key under which a middleware or handler keeps per-request or per-app state."""
from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.schema import ApiKey, Config, ModelConfig


class Routed(msgspec.Struct):
    """A JSON images request once decoded and routed to a public model."""

    public_model: str
    model_config: ModelConfig
    body: Any  # ImageGenerateRequest | ImageEditJSONRequest, defaults applied
    raw: bytes  # the body exactly as the client sent it
    rewritten: bool  # alias resolved, model missing, or defaults filled: the bytes must change
    defaults: dict[str, Any]

CONFIG = web.AppKey("config", Config)

REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)  # absent on an open gateway
KEY_ID = web.RequestKey("key_id", str)  # label and log value: the key's id, never the secret
MODEL = web.RequestKey("model", str)  # the public model name, once it is known and configured
PROVIDER = web.RequestKey("provider", str)  # the provider name of the route that answered
IMAGES = web.RequestKey("images", int)  # images in the answer
PROMPT = web.RequestKey("prompt", str)  # set only when server.log_prompts is true
ROUTED = web.RequestKey("routed", Routed)  # set by the rewrite middleware for JSON bodies
IDEMPOTENCY = web.RequestKey("idempotency", str)  # first | replayed | coalesced, with a key
