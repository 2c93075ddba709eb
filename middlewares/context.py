"""Request context: the request id in and out, and one JSON access-log line per request."""
from __future__ import annotations

import asyncio
import gc
import itertools
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from imagegate.middlewares.keys import RECORD, REQUEST_ID_VAR, Record, record_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
log = structlog.get_logger("imagegate.access")


class _Ids:
    """Request ids: a random 64-bit prefix per process (drawn again in a forked worker) and a
    counter, 32 hex digits as before. Unique across workers and restarts without a call to
    the kernel's random source per request; an id names a request, it is no secret."""

    prefix = ""
    count = itertools.count()

    @classmethod
    def reseed(cls) -> None:
        cls.prefix, cls.count = "req_" + secrets.token_hex(8), itertools.count()


_Ids.reseed()
os.register_at_fork(after_in_child=_Ids.reseed)


def new_request_id() -> str:
    return f"{_Ids.prefix}{next(_Ids.count):016x}"


Line = Callable[[str, dict[str, Any]], None]


def _structlog_line(event: str, fields: dict[str, Any]) -> None:
    log.info(event, **fields)


def context_middleware(line: Line = _structlog_line
                       ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """`line` writes the access line (the gateway passes proxy/logs.py's info_line, which
    writes what this default does, for less)."""

    @web.middleware
    async def context_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("x-request-id", "")
        request_id = given if _CLIENT_ID.fullmatch(given) else new_request_id()
        record = request[RECORD] = Record(request_id)
        REQUEST_ID_VAR.set(request_id)  # this request's task: nothing left from an earlier one
        started = time.perf_counter()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # the client hung up; the upstream call is cancelled with us
            raise
        finally:
            line("request", _access_fields(request, record, status, started, response))
            if record.held_bytes >= COLLECT_AFTER_BYTES:
                _Heap.collect_soon()

    return context_mw


COLLECT_AFTER_BYTES = 4 * 1024 * 1024


class _Heap:
    """A request that held megabytes of images ends with a full garbage collection, on the
    loop's next turn (its exceptions have been handled by then). A failed download or a
    cancelled attempt leaves reference cycles (exception, traceback, frame; aiohttp's timers
    and tasks) that can hold its image bytes, and the server collects the young generation
    only every 10,000 allocations (proxy/cli.py): without this, that garbage could outlive the
    request by several more and push peak RSS past request_budget_bytes. A collection takes a
    millisecond or two (start-up's objects are frozen: 40,000 live ones, 1.8 ms on the shared
    development machine); such a request takes tens to hundreds."""

    pending = False

    @classmethod
    def collect_soon(cls) -> None:
        if not cls.pending:
            cls.pending = True
            asyncio.get_running_loop().call_soon(cls._collect)

    @classmethod
    def _collect(cls) -> None:
        cls.pending = False
        gc.collect()


def milliseconds(seconds: float) -> float:
    """A duration in ms to 0.01 ms for the logs (round(x, 2) takes the slow, exactly rounded
    path through a decimal string: 2.5x the cost)."""
    return int(seconds * 100_000 + 0.5) / 100


def _access_fields(request: web.Request, record: Record, status: int, started: float,
                   response: web.StreamResponse | None) -> dict[str, Any]:
    bytes_out = 0
    if response is not None:
        bytes_out = response.body_length if response.prepared else len(
            getattr(response, "body", b"") or b""
        )
    extra = {"prompt": record.prompt} if record.prompt is not None else {}
    if record.idempotency is not None:
        extra["idempotency"] = record.idempotency
    outcome = record.outcome
    return {
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": milliseconds(time.perf_counter() - started),
        "key": record.key_id,
        "model": record.model,
        "provider": outcome.provider if outcome is not None else None,
        "images": outcome.images if outcome is not None else 0,
        "cost_usd": record.cost_usd,  # null: unpriced route, or no answer
        "bytes_in": request.content_length or 0,
        "bytes_out": bytes_out,
        **extra,
    }


async def set_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, streamed ones too, carries x-request-id."""
    request_id = record_of(request).request_id
    if request_id:
        response.headers["x-request-id"] = request_id
