"""The Idempotency-Key ledger: per-process memory, or Redis shared by every gateway; answers
in the ledger itself, or in an object store (AnswerBlobs) beside the hosted images."""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
import structlog
from imagegate.config.schema import StateConfig
from imagegate.middlewares import redis_state

PREFIX = "imagegate:idem:"
log = structlog.get_logger("imagegate.idempotency")


class StoredAnswer(msgspec.Struct, frozen=True, array_like=True):
    """A finished successful answer, replayed as it was (its headers chosen by the caller)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    expires_at: float  # wall-clock seconds


@dataclass(frozen=True)
class Claim:
    """won: the caller runs the request (holding `token`); held: another request runs it;
    done: `answer` is the finished answer; mismatch: the key was used for another request."""

    kind: Literal["won", "held", "done", "mismatch"]
    token: str = ""
    answer: StoredAnswer | None = None


class Ledger(Protocol):
    errors: tuple[type[Exception], ...]  # what a shared store that is down raises

    async def claim(self, scope: str, fingerprint: str) -> Claim: ...
    async def heartbeat(self, scope: str, token: str) -> bool: ...
    async def finish(self, scope: str, token: str, answer: StoredAnswer) -> bool: ...
    async def release(self, scope: str, token: str) -> None: ...
    async def close(self) -> None: ...


class AnswerBlobs(Protocol):
    """Where stored answers' bytes go when not in the ledger (an S3 bucket): the records
    (fingerprints, leases) stay in the ledger, which writes an answer before marking it done."""

    errors: tuple[type[Exception], ...]  # what a store that is down raises

    async def put(self, name: str, data: bytes, ttl_s: float) -> None: ...
    async def get(self, name: str) -> bytes | None: ...
    async def delete(self, name: str) -> None: ...


_answer = msgspec.msgpack.Decoder(StoredAnswer)


def new_token() -> str:
    return secrets.token_hex(12)


@dataclass
class _Entry:
    fingerprint: str
    token: str
    lease_until: float
    answer: StoredAnswer | None = None  # with blobs: a stand-in without the body
    blob: str = ""  # with blobs: the name the answer is stored under


class MemoryLedger:
    """One process's ledger: duplicates that reach another worker are not seen here."""

    def __init__(self, lease_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time, blobs: AnswerBlobs | None = None
                 ) -> None:
        self.lease_s, self.max_bytes, self.clock = lease_s, max_bytes, clock
        self.blobs = blobs  # then max_bytes caps each answer; none is held here
        self.errors: tuple[type[Exception], ...] = blobs.errors if blobs else ()
        self.entries: OrderedDict[str, _Entry] = OrderedDict()  # done ones oldest first
        self.stored_bytes = 0

    def _live(self, scope: str, now: float) -> _Entry | None:
        entry = self.entries.get(scope)
        if entry is None:
            return None
        if entry.answer is not None and entry.answer.expires_at <= now:
            self._drop(scope)
            return None
        if entry.answer is None and entry.lease_until < now:
            del self.entries[scope]  # its holder stopped renewing it
            return None
        return entry

    def _drop(self, scope: str) -> None:
        entry = self.entries.pop(scope)
        if entry.answer is not None:
            self.stored_bytes -= len(entry.answer.body)

    async def claim(self, scope: str, fingerprint: str) -> Claim:
        now = self.clock()
        self._expire(now)
        entry = self._live(scope, now)
        if entry is None:
            token = new_token()
            self.entries[scope] = _Entry(fingerprint, token, now + self.lease_s)
            return Claim("won", token)
        if entry.fingerprint != fingerprint:
            return Claim("mismatch")
        if entry.answer is not None and entry.blob and self.blobs is not None:
            blob = await self.blobs.get(entry.blob)
            if blob is not None:
                return Claim("done", answer=_answer.decode(blob))
            if self.entries.get(scope) is entry:  # expired or removed from the store
                self._drop(scope)
            return await self.claim(scope, fingerprint)
        if entry.answer is not None:
            return Claim("done", answer=entry.answer)
        return Claim("held")

    async def heartbeat(self, scope: str, token: str) -> bool:
        entry = self.entries.get(scope)
        if entry is None or entry.token != token or entry.answer is not None:
            return False
        entry.lease_until = self.clock() + self.lease_s
        return True

    async def finish(self, scope: str, token: str, answer: StoredAnswer) -> bool:
        entry = self.entries.get(scope)
        if entry is None or entry.token != token or entry.answer is not None:
            return False
        if len(answer.body) > self.max_bytes:
            del self.entries[scope]
            log.warning("idempotent_answer_not_stored", reason="larger than max_stored_bytes")
            return False
        if self.blobs is not None:
            return await self._finish_in_blobs(scope, entry, token, answer)
        entry.answer, entry.token = answer, ""
        self.entries.move_to_end(scope)
        self.stored_bytes += len(answer.body)
        while self.stored_bytes > self.max_bytes:  # the oldest answers make room
            self._drop(next(s for s, e in self.entries.items() if e.answer is not None))
        return True

    async def _finish_in_blobs(self, scope: str, entry: _Entry, token: str,
                               answer: StoredAnswer) -> bool:
        assert self.blobs is not None
        name = f"{scope}:answer:{token}"
        try:
            await self.blobs.put(name, msgspec.msgpack.encode(answer),
                                 max(1.0, answer.expires_at - self.clock()))
        except self.blobs.errors:
            await self.release(scope, token)  # a retry runs again at once, not after the lease
            raise
        if self.entries.get(scope) is not entry or entry.token != token:
            await self.blobs.delete(name)  # the lease lapsed while the answer was written
            return False
        entry.answer, entry.token, entry.blob = StoredAnswer(
            answer.status, [], b"", answer.expires_at), "", name
        self.entries.move_to_end(scope)
        return True

    async def release(self, scope: str, token: str) -> None:
        entry = self.entries.get(scope)
        if entry is not None and entry.token == token and entry.answer is None:
            del self.entries[scope]

    def _expire(self, now: float) -> None:
        """Drops expired answers from the front (kept in the order they finished; one that
        ends early, with its links, is dropped when it is next asked for)."""
        expired: list[str] = []
        for scope, entry in self.entries.items():
            if entry.answer is None:
                continue
            if entry.answer.expires_at > now or len(expired) >= 64:
                break
            expired.append(scope)
        for scope in expired:
            self._drop(scope)

    async def close(self) -> None:
        self.entries.clear()


# Records are small JSON objects; the answer itself sits under its own key, written first.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then
  local r = cjson.decode(v)
  if r.done or tonumber(r.lease_until) >= tonumber(ARGV[1]) then return v end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
"""
_SWAP = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local r = cjson.decode(v)
if r.token ~= ARGV[1] or r.done then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_DROP_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Record(msgspec.Struct):
    fp: str
    token: str
    lease_until: float = 0.0
    done: bool = False


_record = msgspec.json.Decoder(_Record)


class RedisLedger:
    """Shared by every worker and machine on the Redis: the in-flight marker is a lease that
    its holder renews; a holder that died stops renewing and the next request runs again."""

    def __init__(self, state: StateConfig, lease_s: float, ttl_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time, blobs: AnswerBlobs | None = None
                 ) -> None:
        self.client: Any = redis_state.connect(state, connect_timeout_s=2, timeout_s=5)
        self.errors = redis_state.errors()
        self.blobs = blobs  # answers there, records here
        if blobs is not None:
            self.errors += blobs.errors
        self.lease_s, self.ttl_s, self.max_bytes, self.clock = lease_s, ttl_s, max_bytes, clock
        self._claim = self.client.register_script(_CLAIM)
        self._swap = self.client.register_script(_SWAP)
        self._drop_if = self.client.register_script(_DROP_IF)

    def _running(self, fingerprint: str, token: str) -> tuple[bytes, int]:
        record = _Record(fingerprint, token, self.clock() + self.lease_s)
        # a backstop for Redis itself; the lease is judged by `lease_until`
        return msgspec.json.encode(record), int(self.lease_s * 2000)

    async def claim(self, scope: str, fingerprint: str) -> Claim:
        key = PREFIX + scope
        for _ in range(3):
            token = new_token()
            running, px = self._running(fingerprint, token)
            found = await self._claim(keys=[key], args=[self.clock(), running, px])
            if found is None:
                return Claim("won", token)
            record = _record.decode(found)
            if record.fp != fingerprint:
                return Claim("mismatch")
            if not record.done:
                return Claim("held")
            blob = await self._get_answer(f"{key}:answer:{record.token}")
            if blob is not None:
                return Claim("done", answer=_answer.decode(blob))
            await self._drop_if(keys=[key], args=[found])  # its answer was evicted
        return Claim("held")

    async def heartbeat(self, scope: str, token: str) -> bool:
        key = PREFIX + scope
        found = await self.client.get(key)
        if found is None:
            return False
        record = _record.decode(found)  # the swap below checks that it is still ours
        record.lease_until = self.clock() + self.lease_s
        renewed = await self._swap(keys=[key], args=[token, msgspec.json.encode(record),
                                                     int(self.lease_s * 2000)])
        return bool(renewed)

    async def finish(self, scope: str, token: str, answer: StoredAnswer) -> bool:
        key = PREFIX + scope
        if len(answer.body) > self.max_bytes:
            await self.release(scope, token)
            log.warning("idempotent_answer_not_stored", reason="larger than max_stored_bytes")
            return False
        px = max(1, int((answer.expires_at - self.clock()) * 1000))
        found = await self.client.get(key)
        if found is None:
            return False
        record = _record.decode(found)
        record.done = True
        answer_key = f"{key}:answer:{token}"
        if self.blobs is not None:
            try:
                await self.blobs.put(answer_key, msgspec.msgpack.encode(answer), px / 1000)
            except self.blobs.errors:
                await self.release(scope, token)  # a retry runs again at once
                raise
        else:
            await self.client.set(answer_key, msgspec.msgpack.encode(answer), px=px)
        if await self._swap(keys=[key], args=[token, msgspec.json.encode(record), px]):
            return True
        # the lease had passed to another request
        await (self.blobs.delete(answer_key) if self.blobs else self.client.delete(answer_key))
        return False

    async def _get_answer(self, name: str) -> bytes | None:
        if self.blobs is not None:
            return await self.blobs.get(name)
        found: bytes | None = await self.client.get(name)
        return found

    async def release(self, scope: str, token: str) -> None:
        await self._swap(keys=[PREFIX + scope], args=[token, "", 0])

    async def warm(self) -> None:
        await redis_state.warm(self.client, _CLAIM, _SWAP, _DROP_IF)

    async def close(self) -> None:
        await self.client.aclose()
