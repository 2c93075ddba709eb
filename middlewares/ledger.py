"""The Idempotency-Key ledger: per-process memory, or Redis shared by every gateway."""
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


def new_token() -> str:
    return secrets.token_hex(12)


@dataclass
class _Entry:
    fingerprint: str
    token: str
    lease_until: float
    answer: StoredAnswer | None = None


class MemoryLedger:
    """One process's ledger: duplicates that reach another worker are not seen here."""

    def __init__(self, lease_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.lease_s, self.max_bytes, self.clock = lease_s, max_bytes, clock
        self.errors: tuple[type[Exception], ...] = ()
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
        entry.answer, entry.token = answer, ""
        self.entries.move_to_end(scope)
        self.stored_bytes += len(answer.body)
        while self.stored_bytes > self.max_bytes:  # the oldest answers make room
            self._drop(next(s for s, e in self.entries.items() if e.answer is not None))
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
_answer = msgspec.msgpack.Decoder(StoredAnswer)


class RedisLedger:
    """Shared by every worker and machine on the Redis: the in-flight marker is a lease that
    its holder renews; a holder that died stops renewing and the next request runs again."""

    def __init__(self, state: StateConfig, lease_s: float, ttl_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.client: Any = redis_state.connect(state, connect_timeout_s=2, timeout_s=5)
        self.errors = redis_state.errors()
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
            blob = await self.client.get(f"{key}:answer:{record.token}")
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
        await self.client.set(answer_key, msgspec.msgpack.encode(answer), px=px)
        if await self._swap(keys=[key], args=[token, msgspec.json.encode(record), px]):
            return True
        await self.client.delete(answer_key)  # the lease had passed to another request
        return False

    async def release(self, scope: str, token: str) -> None:
        await self._swap(keys=[PREFIX + scope], args=[token, "", 0])

    async def warm(self) -> None:
        await redis_state.warm(self.client, _CLAIM, _SWAP, _DROP_IF)

    async def close(self) -> None:
        await self.client.aclose()
