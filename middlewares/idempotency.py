"""Exactly-once image requests: an `Idempotency-Key` replays a finished answer, joins a running
one, and keeps a request running (and its answer kept) when its client hangs up."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config
from imagegate.middlewares.exactly_once import HEADER, ExactlyOnce
from imagegate.middlewares.keys import ROUTED

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ENDPOINTS = {"/v1/images/generations": "generations", "/v1/images/edits": "edits",
             "/v1/images/variations": "variations"}
_VALID = re.compile(r"[\x20-\x7e]{1,255}")


def check_key(value: str) -> None:
    if not _VALID.fullmatch(value):  # never echoed: it may be anything the client sent
        raise GatewayError("invalid_value", f"The '{HEADER}' header must be 1 to 255 printable "
                           "ASCII characters.", param=HEADER)


def json_fingerprint(raw: bytes) -> str:
    """The same JSON in another key order or spacing is the same request."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(raw), order="sorted")
    except (msgspec.DecodeError, UnicodeDecodeError):
        canonical = raw
    return "json:" + hashlib.sha256(canonical).hexdigest()


def idempotency_middleware(config: Config, once: ExactlyOnce
                           ) -> Callable[..., Awaitable[web.StreamResponse]]:
    timeouts = {name: provider.timeout_s for name, provider in config.providers.items()}

    @web.middleware
    async def idempotency_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        endpoint = ENDPOINTS.get(request.path)
        if key is None or endpoint is None or request.method != "POST":
            return await handler(request)
        check_key(key)
        routed = request.get(ROUTED)
        if routed is None:
            return await handler(request)
        # a duplicate waits as long as the first one's provider may take
        wait_s = max(timeouts[route.provider] for route in routed.model_config.routes)
        return await once.answer(request, handler, key, endpoint, json_fingerprint(routed.raw),
                                 wait_s)

    return idempotency_mw
