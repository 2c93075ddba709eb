"""Every key under which a middleware or handler keeps per-request or per-app state, and the two
typed results that travel on the request: what was asked (`ParsedRequest`) and who answered it
(`Outcome`). Each key is written in one place and read by the logs, metrics and later layers."""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import msgspec
from aiohttp import web
from imagegate.config.api import Usage
from imagegate.config.schema import ApiKey, Config, ModelConfig, Route
from imagegate.middlewares.forms import Form


class ParsedRequest(msgspec.Struct, frozen=True):
    """An images POST once its body's head is read (by middlewares/parse.py): the model resolved,
    the key's allowlist checked, the model's defaults filled. (Frozen msgspec Structs, this and
    Outcome: made in C, where a frozen dataclass sets each field through object.__setattr__,
    ~10x the cost, on every request.)"""

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


class Outcome(msgspec.Struct, frozen=True):
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

PARSED = web.RequestKey("parsed", ParsedRequest)  # images POSTs, by middlewares/parse.py


class Record(msgspec.Struct):
    """What the access log and the metrics read about one request, on one object (attribute
    reads, not a mapping lookup that raises for every absent key). Each field is written in one
    place, named beside it; None until then."""

    request_id: str = ""  # middlewares/context.py
    api_key: ApiKey | None = None  # middlewares/auth.py; None on an open gateway
    key_id: str | None = None  # auth: label and log value, the key's id, never the secret
    model: str | None = None  # middlewares/parse.py: the public model name, once configured
    prompt: str | None = None  # parse, only when server.log_prompts is true
    outcome: Outcome | None = None  # proxy/dispatch.py: images answers
    cost_usd: float | None = None  # middlewares/ratelimit.py: when the route has a price
    usage_headers: dict[str, str] | None = None  # ratelimit: x-ratelimit-*, budget, cost
    idempotency: str | None = None  # middlewares/exactly_once.py: first | replayed | coalesced
    held_bytes: int = 0  # proxy/budget.py: the most image bytes it held (or asked to)


RECORD = web.RequestKey("record", Record)


def record_of(request: web.Request) -> Record:
    """The request's record: made by the context middleware, or here for a layer run alone."""
    try:
        return request[RECORD]
    except KeyError:
        record = request[RECORD] = Record()
        return record


# the id of the request this task answers: set by the context middleware, put on every log
# line by proxy/logs.py and sent upstream by proxy/upstream.py (one variable, not structlog's
# scan over every context variable on each line)
REQUEST_ID_VAR: ContextVar[str | None] = ContextVar("imagegate_request_id", default=None)
