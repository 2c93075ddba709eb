"""Every key under which a middleware or handler keeps per-request or per-app state."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from config.schema import ApiKey, Config

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Any)  # middlewares.metrics.Metrics

REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)  # absent on an open gateway
KEY_ID = web.RequestKey("key_id", str)  # label and log value: the key's id, never the secret
MODEL = web.RequestKey("model", str)  # the public model name, once it is known and configured
PROVIDER = web.RequestKey("provider", str)  # the provider name of the route that answered
IMAGES = web.RequestKey("images", int)  # images in the answer
PROMPT = web.RequestKey("prompt", str)  # set only when server.log_prompts is true
ROUTED = web.RequestKey("routed", Any)  # middlewares.rewrite.Routed, set for JSON bodies
