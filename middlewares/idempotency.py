"""Exactly-once image requests: an `Idempotency-Key` replays a finished answer, joins a running
one, and keeps a request running (and its answer kept) when its client hangs up."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import IO

import msgspec
from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config
from imagegate.middlewares.exactly_once import HEADER, ExactlyOnce
from imagegate.middlewares.forms import Form, is_file, reread, spooled_events, take_whole
from imagegate.middlewares.keys import PARSED

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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


async def form_fingerprint(form: Form, spool: IO[bytes]) -> str:
    """Every text field (in any order) and each file's sha256 (in the order sent)."""
    texts: dict[str, bytes] = {}
    files: list[tuple[str, str]] = []
    name, text, digest = "", False, hashlib.sha256()
    async for ev in spooled_events(form, spool):
        if ev.kind == "part":
            name, text, digest = ev.part.name, not is_file(ev.part), hashlib.sha256()
            if text:
                texts[name] = b""
        elif ev.kind == "data":
            if text:
                texts[name] += ev.data
            else:
                digest.update(ev.data)
        elif ev.kind == "end" and not text:
            files.append((name, digest.hexdigest()))
    reread(form, spool)  # the answer reads the body from the start
    summary = msgspec.json.encode([sorted((k, v.hex()) for k, v in texts.items()), files])
    return "multipart:" + hashlib.sha256(summary).hexdigest()


def idempotency_middleware(config: Config, once: ExactlyOnce
                           ) -> Callable[..., Awaitable[web.StreamResponse]]:
    timeouts = {name: provider.timeout_s for name, provider in config.providers.items()}

    @web.middleware
    async def idempotency_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        parsed = request.get(PARSED)
        if key is None or parsed is None:
            return await handler(request)
        check_key(key)
        # a duplicate waits as long as the first one's provider may take
        wait_s = max(timeouts[route.provider] for route in parsed.model_config.routes)
        if parsed.form is None:
            return await once.answer(request, handler, key, parsed.endpoint,
                                     json_fingerprint(parsed.raw or b""), wait_s)
        # the whole form is read first: its files are part of the fingerprint, and a request
        # that outlives its client must not depend on the client's connection
        spool = await take_whole(parsed.form)
        try:
            fingerprint = await form_fingerprint(parsed.form, spool)
        except BaseException:
            spool.close()
            raise
        return await once.answer(request, handler, key, parsed.endpoint, fingerprint, wait_s,
                                 close=spool.close)

    return idempotency_mw
