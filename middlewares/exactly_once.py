"""Exactly-once runs behind an Idempotency-Key: claims, replays, waits, detached requests."""
from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.schema import Config
from imagegate.middlewares.capture import TeeWriter, answer_of
from imagegate.middlewares.keys import record_of
from imagegate.middlewares.ledger import (
    AnswerBlobs,
    Ledger,
    MemoryLedger,
    RedisLedger,
    StoredAnswer,
)
from imagegate.middlewares.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADER = "Idempotency-Key"
POLL_S = 0.25  # how often a waiting duplicate looks at a ledger another process may change
_LINK_EXPIRES = re.compile(rb"/v1/images/files/[A-Za-z0-9_.-]+\?expires=([0-9]{1,12})")
# a presigned S3 link (SigV4): signed at X-Amz-Date, valid X-Amz-Expires seconds from then
_PRESIGNED = re.compile(
    rb"X-Amz-Date=([0-9]{8}T[0-9]{6})Z(?:&|\\u0026)X-Amz-Expires=([0-9]{1,7})")
log = structlog.get_logger("imagegate.idempotency")


def scope_of(key_id: str, endpoint: str, key: str) -> str:
    """Keys are per caller and endpoint; the key id is a hash tag (one Redis Cluster slot)."""
    return f"{{{key_id}}}:{endpoint}:{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def make_ledger(config: Config, clock: Callable[[], float],
                blobs: AnswerBlobs | None = None) -> Ledger:
    idem = config.idempotency
    if config.state.backend == "redis":
        return RedisLedger(config.state, idem.lease_s, idem.ttl_s, idem.max_stored_bytes,
                           clock, blobs)
    return MemoryLedger(idem.lease_s, idem.max_stored_bytes, clock, blobs)


def presigned_expiry(signed_at: bytes, valid_s: bytes) -> float:
    try:
        signed = calendar.timegm(time.strptime(signed_at.decode(), "%Y%m%dT%H%M%S"))
    except ValueError:
        return float("inf")  # not a date: not a link of ours
    return float(signed + int(valid_s))


class ExactlyOnce:
    """The ledger, and the set of requests running on after their client left (owned by the
    app: its cleanup waits for them up to graceful_shutdown_s)."""

    def __init__(self, config: Config, metrics: Metrics, ledger: Ledger | None = None,
                 clock: Callable[[], float] = time.time, blobs: AnswerBlobs | None = None
                 ) -> None:
        self.ttl_s, self.lease_s = config.idempotency.ttl_s, config.idempotency.lease_s
        self.grace_s = config.server.graceful_shutdown_s
        self.fail_open = config.state.on_redis_error == "open"
        self.metrics, self.clock = metrics, clock
        self.ledger = ledger if ledger is not None else make_ledger(config, clock, blobs)
        self.tasks: set[asyncio.Task[web.StreamResponse]] = set()
        self.changed: dict[str, asyncio.Event] = {}  # wakes this process's waiting duplicates

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        if isinstance(self.ledger, RedisLedger):
            await self.ledger.warm()
        yield
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.grace_s)
        for task in list(self.tasks):
            task.cancel()  # their keys are released: a retry runs again
        if self.tasks:
            await asyncio.wait(self.tasks)
        await self.ledger.close()

    async def answer(self, request: web.Request, handler: Handler, key: str, endpoint: str,
                     fingerprint: str, wait_s: float, close: Callable[[], None] = lambda: None
                     ) -> web.StreamResponse:
        """`close` frees what the request needs to the end (a spooled form): called once it is
        answered, by the detached run when there is one."""
        scope = scope_of(record_of(request).key_id or "anonymous", endpoint, key)
        deadline = time.monotonic() + wait_s
        waited = detached = False
        try:
            while True:
                try:
                    claim = await self.ledger.claim(scope, fingerprint)
                except self.ledger.errors:
                    log.warning("idempotency_unavailable", action="claim")
                    if not self.fail_open:
                        raise GatewayError("upstream_unavailable", "The gateway's shared state "
                                           "is unavailable.", status=503,
                                           headers={"retry-after": "5"}) from None
                    return await handler(request)  # served without the protection
                if claim.kind == "mismatch":
                    raise GatewayError("idempotency_key_reused", f"This {HEADER} was already "
                                       "used for a different request.", param=HEADER)
                if claim.answer is not None:
                    return self._replay(request, claim.answer,
                                        "coalesced" if waited else "replayed")
                if claim.kind == "won":
                    record_of(request).idempotency, detached = "first", True
                    return await self._first(request, handler, scope, claim.token, close)
                waited = True
                await self._wait(scope, deadline - time.monotonic())
        finally:
            if waited:  # others still waiting on it fall back to polling
                self.changed.pop(scope, None)
            if not detached:
                close()

    async def _wait(self, scope: str, left: float) -> None:
        if left <= 0:
            raise GatewayError("idempotency_key_in_use", f"A request with this {HEADER} is "
                               "still running.", param=HEADER, headers={"retry-after": "1"})
        changed = self.changed.setdefault(scope, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(left, POLL_S))

    def _replay(self, request: web.Request, answer: StoredAnswer, how: str) -> web.Response:
        record = record_of(request)
        record.idempotency = how
        family = self.metrics.idempotent_replays if how == "replayed" else (
            self.metrics.idempotent_coalesced)
        self.metrics.add(family, record.key_id or "anonymous")
        response = web.Response(status=answer.status, body=answer.body)
        for name, value in answer.headers:
            response.headers[name] = value
        response.headers["idempotent-replayed"] = "true"
        return response

    async def _first(self, request: web.Request, handler: Handler, scope: str, token: str,
                     close: Callable[[], None]) -> web.StreamResponse:
        """Runs the request as an app-owned task: a client hanging up cancels this wait only,
        and what the task writes is kept by the tee even once nobody reads it."""
        tee = TeeWriter(request._payload_writer)
        request._payload_writer = tee
        task = asyncio.get_running_loop().create_task(
            self._run(request, handler, scope, token, tee, close))
        self.tasks.add(task)
        task.add_done_callback(self._forget)
        await asyncio.wait({task})
        return task.result()

    def _forget(self, task: asyncio.Task[web.StreamResponse]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a detached failure was logged and its key released

    async def _run(self, request: web.Request, handler: Handler, scope: str, token: str,
                   tee: TeeWriter, close: Callable[[], None]) -> web.StreamResponse:
        beat = asyncio.create_task(self._heartbeat(scope, token))
        try:
            response = await handler(request)
        except BaseException as exc:
            await self._release(scope, token)
            if not tee.alive or request.transport is None:
                log.info("idempotent_request_failed_after_hang_up", error=type(exc).__name__)
            raise
        finally:
            close()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        answer = answer_of(response, tee, self._expiry(response, tee))
        if answer is None:
            await self._release(scope, token)
        else:
            await self._store(scope, token, answer)
        if not tee.alive or request.transport is None:
            log.info("idempotent_answer_kept_after_hang_up", status=response.status,
                     stored=answer is not None)
        return response

    def _expiry(self, response: web.StreamResponse, tee: TeeWriter) -> float:
        """The ttl, but never past the first hosted link in the answer: a replay's links work."""
        body = response.body if isinstance(response, web.Response) and not response.prepared \
            else b"".join(tee.chunks)
        expires = self.clock() + self.ttl_s
        if isinstance(body, bytes):
            for m in _LINK_EXPIRES.finditer(body):
                expires = min(expires, float(m.group(1)))
            for m in _PRESIGNED.finditer(body):
                expires = min(expires, presigned_expiry(m.group(1), m.group(2)))
        return expires

    async def _heartbeat(self, scope: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not await self.ledger.heartbeat(scope, token):
                    log.warning("idempotency_lease_lost")
                    return
            except self.ledger.errors:
                log.warning("idempotency_unavailable", action="heartbeat")

    async def _store(self, scope: str, token: str, answer: StoredAnswer) -> None:
        try:
            if not await self.ledger.finish(scope, token, answer):
                log.warning("idempotent_answer_not_stored", reason="lease lost")
        except self.ledger.errors:
            log.warning("idempotency_unavailable", action="store")
        except Exception:  # the answer still goes out; only its replay is lost
            log.exception("idempotent_answer_not_stored")
        self._wake(scope)

    async def _release(self, scope: str, token: str) -> None:
        try:
            await self.ledger.release(scope, token)
        except self.ledger.errors:
            log.warning("idempotency_unavailable", action="release")  # the lease lapses
        self._wake(scope)

    def _wake(self, scope: str) -> None:
        changed = self.changed.pop(scope, None)
        if changed is not None:
            changed.set()


EXACTLY_ONCE = web.AppKey("exactly_once", ExactlyOnce)
