"""Every key under which a middleware or handler keeps per-request or per-app state, and the two
typed results that travel on the request: what was asked (`ParsedRequest`) and who answered it
(`Outcome`). Each key is written in one place and read by the logs, metrics and later layers."""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from imagegate.config.api import Usage
from imagegate.config.schema import ApiKey, Config, ModelConfig, Route
from imagegate.middlewares.forms import Form


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """An images POST once its body's head is read (by middlewares/parse.py): the model resolved,
    the key's allowlist checked, the model's defaults filled."""

    endpoint: str  # "generations" | "edits" | "variations"
    public_model: str
    model_config: ModelConfig
    n: int  # >= 1, after defaults
    stream: bool
    body: Any  # ImageGenerateRequest | ImageEditJSONRequest | ImageEditForm, defaults applied
    raw: bytes | None  # the JSON body exactly as sent; None for multipart
    form: Form | None  # multipart: the head's fields and the rest of the body, still unread
    filled: dict[str, Any]  # the defaults that were filled in

    @property
    def rewritten(self) -> bool:
        """The JSON bytes must change on the way out: an alias, a missing model or defaults."""
        return bool(self.filled) or self.body.model != self.public_model


@dataclass(frozen=True, slots=True)
class Outcome:
    """The route that answered an images request and what it delivered (set by proxy/dispatch.py
    before the handler returns, streamed answers included)."""

    provider: str  # the configured provider name
    route: Route
    provider_model: str
    images: int  # images actually delivered to the client
    usage: Usage | None
    size: str | None  # as asked (after defaults)
    quality: str | None
    attempts: int  # upstream attempts this request took


CONFIG = web.AppKey("config", Config)

REQUEST_ID = web.RequestKey("request_id", str)
API_KEY = web.RequestKey("api_key", ApiKey)  # absent on an open gateway
KEY_ID = web.RequestKey("key_id", str)  # label and log value: the key's id, never the secret
MODEL = web.RequestKey("model", str)  # the public model name, once it is known and configured
PROMPT = web.RequestKey("prompt", str)  # set only when server.log_prompts is true
PARSED = web.RequestKey("parsed", ParsedRequest)  # images POSTs, by middlewares/parse.py
OUTCOME = web.RequestKey("outcome", Outcome)  # images answers, by proxy/dispatch.py
COST = web.RequestKey("cost_usd", float)  # the answer's cost, when its route has a price
USAGE_HEADERS = web.RequestKey("usage_headers", dict)  # x-ratelimit-*, budget, cost headers
IDEMPOTENCY = web.RequestKey("idempotency", str)  # first | replayed | coalesced, with a key


# the id of the request this task answers: set by the context middleware, put on every log
# line by proxy/logs.py and sent upstream by proxy/upstream.py (one variable, not structlog's
# scan over every context variable on each line)
REQUEST_ID_VAR: ContextVar[str | None] = ContextVar("imagegate_request_id", default=None)
