"""Admission state: sliding-window logs, concurrency leases and budget counters, in memory or in
Redis (one Lua script: every check and every update in one atomic round trip)."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.config.schema import StateConfig
from imagegate.middlewares import redis_state

WINDOW_S = 60.0
LEASE_TTL_S = 60.0  # a slot held by a process that died frees itself this long after
REDIS_RETRY_S = 2.0  # after a Redis failure, memory answers this long before Redis is tried again
WARN_EVERY_S = 60.0
log = structlog.get_logger("imagegate.limits")


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` units (requests, or images counting n) in any WINDOW_S seconds."""

    name: str
    key: str
    limit: int
    weight: int


@dataclass(frozen=True, slots=True)
class Slot:
    """At most `limit` requests in flight (a lease per request)."""

    name: str
    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class Cap:
    """A budget counter for one calendar window: `reserve` is taken at admission; `strict` also
    refuses when nothing is left, even if `reserve` is 0 (a cost known only afterwards)."""

    name: str
    key: str
    limit: int
    reserve: int
    strict: bool
    resets_at: float  # epoch seconds of the window's end


@dataclass(slots=True)
class Plan:
    """What one admission checks. Built once per key, model, n, size, quality and UTC day,
    then shared by every request alike (never changed after it is built)."""

    windows: list[Window]
    slots: list[Slot]
    caps: list[Cap]
    groups: list[tuple[str, list[int]]] = field(default_factory=list)  # header kind -> windows


@dataclass(slots=True)
class Decision:
    refused: Window | Slot | Cap | None
    retry_after_s: float
    used: list[int]  # per window, this request included when admitted
    resets_s: list[float]  # per window: until it holds nothing again
    spent: list[int]  # per cap, the reservation included when admitted
    ticket: str = ""
    backend: Any = None
    plan: Plan = field(default_factory=lambda: Plan([], [], []))


_ids = itertools.count()
_PREFIX = f"{os.getpid():x}.{int(time.time() * 1000):x}."


def new_ticket() -> str:
    return _PREFIX + str(next(_ids))


class MemoryBackend:
    """One process's state; also the fallback while Redis is unreachable (state.on_redis_error)."""

    def __init__(self) -> None:
        self.logs: dict[str, collections.deque[tuple[float, int]]] = {}
        self.sums: dict[str, int] = {}
        self.leases: dict[str, set[str]] = {}
        self.counters: dict[str, tuple[float, int]] = {}  # key -> (resets_at, value)

    async def admit(self, plan: Plan, ticket: str, now: float) -> Decision:
        used = [self._used(w.key, now) for w in plan.windows]
        spent = [self._spent(c.key, now) for c in plan.caps]
        refused, retry = _first_refusal(plan, used, spent, now, self._retry, self.slot_refused)
        if refused is None:
            for w, u in zip(plan.windows, used, strict=True):
                self.logs.setdefault(w.key, collections.deque()).append((now, w.weight))
                self.sums[w.key] = u + w.weight
            for s in plan.slots:
                self.leases.setdefault(s.key, set()).add(ticket)
            for c, value in zip(plan.caps, spent, strict=True):
                self.counters[c.key] = (c.resets_at, value + c.reserve)
            used = [u + w.weight for u, w in zip(used, plan.windows, strict=True)]
            spent = [v + c.reserve for v, c in zip(spent, plan.caps, strict=True)]
        resets = [self._reset(w.key, now) for w in plan.windows]
        return Decision(refused, retry, used, resets, spent, ticket, self, plan)

    def slot_refused(self, slot: Slot) -> bool:
        return len(self.leases.get(slot.key, ())) >= slot.limit

    async def finish(self, decision: Decision, deltas: list[int]) -> None:
        for s in decision.plan.slots:
            self.leases.get(s.key, set()).discard(decision.ticket)
        for c, delta in zip(decision.plan.caps, deltas, strict=True):
            resets_at, value = self.counters.get(c.key, (c.resets_at, 0))
            self.counters[c.key] = (resets_at, value + delta)

    def _used(self, key: str, now: float) -> int:
        entries = self.logs.get(key)
        if not entries:
            return 0
        total = self.sums[key]
        while entries and entries[0][0] <= now - WINDOW_S:
            total -= entries.popleft()[1]
        self.sums[key] = total
        return total

    def _retry(self, window: Window, used: int, now: float) -> float:
        need, freed = used + window.weight - window.limit, 0
        for at, weight in self.logs.get(window.key, ()):
            freed += weight
            if freed >= need:
                return at + WINDOW_S - now
        return WINDOW_S

    def _reset(self, key: str, now: float) -> float:
        entries = self.logs.get(key)
        return entries[-1][0] + WINDOW_S - now if entries else 0.0

    def _spent(self, key: str, now: float) -> int:
        found = self.counters.get(key)
        if found is None or found[0] <= now:
            if found is not None:
                del self.counters[key]  # a past window: its key is never used again
            return 0
        return found[1]


def _first_refusal(plan: Plan, used: list[int], spent: list[int], now: float,
                   retry: Callable[[Window, int, float], float],
                   slot_refused: Callable[[Slot], bool]
                   ) -> tuple[Window | Slot | Cap | None, float]:
    for w, u in zip(plan.windows, used, strict=True):
        if u + w.weight > w.limit:
            return w, retry(w, u, now)
    for s in plan.slots:
        if slot_refused(s):
            return s, 1.0
    for c, value in zip(plan.caps, spent, strict=True):
        if value + c.reserve > c.limit or (c.strict and value >= c.limit):
            return c, c.resets_at - now
    return None, 0.0


# KEYS: per window its log (zset) and sum; per slot its lease zset; per cap its counter.
# ARGV: now_ms, ticket, windows, slots, caps, window_ms, lease_ms, then per window limit weight,
# per slot limit, per cap limit reserve strict resets_at_ms.
# Returns {refused (1-based over windows, slots, caps; 0 = admitted), retry_ms, used...,
# reset_ms..., spent...}. ARGV travels as one comma-joined string: encoding each argument
# apart is most of the client's CPU for a command this wide. A window entry is "ticket:weight",
# scored by its time.
UNPACK_LUA = """
local packed = ARGV[1]
local ARGV = {}
for v in string.gmatch(packed, '[^,]+') do ARGV[#ARGV + 1] = v end
"""
ADMIT_LUA = UNPACK_LUA + """
local now, ticket = tonumber(ARGV[1]), ARGV[2]
local nw, ns, nc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local span, lease = tonumber(ARGV[6]), tonumber(ARGV[7])
local a, refused, retry, used, resets, spent = 8, 0, 0, {}, {}, {}
for i = 1, nw do
  local log, sum = KEYS[2*i-1], KEYS[2*i]
  local limit, weight = tonumber(ARGV[a]), tonumber(ARGV[a+1])
  a = a + 2
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - span)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - span)
    redis.call('DECRBY', sum, freed)
  end
  local u = 0
  if redis.call('ZCARD', log) > 0 then u = tonumber(redis.call('GET', sum) or '0') end
  used[i] = u
  if refused == 0 and u + weight > limit then
    refused, retry = i, span
    local need, freed = u + weight - limit, 0
    local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
      if freed >= need then retry = tonumber(entries[j+1]) + span - now; break end
    end
  end
end
for i = 1, ns do
  local key = KEYS[2*nw+i]
  local limit = tonumber(ARGV[a])
  a = a + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if refused == 0 and redis.call('ZCARD', key) >= limit then refused, retry = nw+i, 1000 end
end
local caps = {}
for i = 1, nc do
  local key = KEYS[2*nw+ns+i]
  local limit, reserve = tonumber(ARGV[a]), tonumber(ARGV[a+1])
  local strict, ends = ARGV[a+2] == '1', tonumber(ARGV[a+3])
  a = a + 4
  caps[i] = {key, reserve, ends}
  spent[i] = tonumber(redis.call('GET', key) or '0')
  if refused == 0 and (spent[i] + reserve > limit or (strict and spent[i] >= limit)) then
    refused, retry = nw+ns+i, ends - now
  end
end
if refused == 0 then
  for i = 1, nw do
    local log, sum, weight = KEYS[2*i-1], KEYS[2*i], tonumber(ARGV[7+2*i])
    if redis.call('ZCARD', log) == 0 then redis.call('SET', sum, 0) end
    redis.call('ZADD', log, now, ticket .. ':' .. weight)
    used[i] = redis.call('INCRBY', sum, weight)
    redis.call('PEXPIRE', log, span)
    redis.call('PEXPIRE', sum, span)
  end
  for i = 1, ns do
    redis.call('ZADD', KEYS[2*nw+i], now + lease, ticket)
    redis.call('PEXPIRE', KEYS[2*nw+i], lease * 2)
  end
  for i = 1, nc do
    spent[i] = redis.call('INCRBY', caps[i][1], caps[i][2])
    redis.call('PEXPIREAT', caps[i][1], caps[i][3] + 3600000)
  end
end
for i = 1, nw do
  local newest = redis.call('ZRANGE', KEYS[2*i-1], -1, -1, 'WITHSCORES')
  resets[i] = 0
  if #newest > 0 then resets[i] = tonumber(newest[2]) + span - now end
end
local out = {refused, retry}
for i = 1, nw do out[#out+1] = used[i] end
for i = 1, nw do out[#out+1] = resets[i] end
for i = 1, nc do out[#out+1] = spent[i] end
return out
"""


# KEYS: the slot zsets to leave, then the counters to settle; ARGV: ticket, slots, expire_at_ms,
# then one delta per counter. A counter whose window has ended is not brought back.
FINISH_LUA = UNPACK_LUA + """
local ns = tonumber(ARGV[2])
for i = 1, ns do redis.call('ZREM', KEYS[i], ARGV[1]) end
for i = ns + 1, #KEYS do
  local delta = tonumber(ARGV[i - ns + 2])
  if delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], delta) end
end
return 0
"""


class RedisBackend:
    """Shared by every worker and machine on one Redis; slots are leases renewed while held."""

    def __init__(self, state: StateConfig, lease_ttl_s: float = LEASE_TTL_S) -> None:
        from redis.exceptions import NoScriptError

        self.client: Any = redis_state.connect(state, connect_timeout_s=1, timeout_s=1)
        self.errors = redis_state.errors()
        self.no_script = NoScriptError
        self.script = self.client.register_script(ADMIT_LUA)
        self.settle = self.client.register_script(FINISH_LUA)
        self.lease_ttl_s = lease_ttl_s
        self.held: dict[str, list[str]] = {}  # ticket -> its slot keys, renewed while held
        self.pending: list[tuple[tuple[list[str], list[Any]], asyncio.Future[None]]] = []
        self.flusher: asyncio.Future[None] | None = None  # the batch being sent, owned here

    async def admit(self, plan: Plan, ticket: str, now: float) -> Decision:
        keys = [k for w in plan.windows for k in (w.key, w.key + ":sum")]
        keys += [s.key for s in plan.slots] + [c.key for c in plan.caps]
        args: list[Any] = [int(now * 1000), ticket, len(plan.windows), len(plan.slots),
                           len(plan.caps), int(WINDOW_S * 1000), int(self.lease_ttl_s * 1000)]
        for w in plan.windows:
            args += [w.limit, w.weight]
        args += [s.limit for s in plan.slots]
        for c in plan.caps:
            args += [c.limit, c.reserve, int(c.strict), int(c.resets_at * 1000)]
        out = [int(v) for v in await self.script(keys=keys, args=[",".join(map(str, args))])]
        nw = len(plan.windows)
        items: list[Window | Slot | Cap] = [*plan.windows, *plan.slots, *plan.caps]
        refused = items[out[0] - 1] if out[0] else None
        if refused is None and plan.slots:
            self.held[ticket] = [s.key for s in plan.slots]
        return Decision(refused, out[1] / 1000, out[2:2 + nw],
                        [v / 1000 for v in out[2 + nw:2 + 2 * nw]], out[2 + 2 * nw:],
                        ticket, self, plan)

    async def finish(self, decision: Decision, deltas: list[int]) -> None:
        """Releases the slots and settles the reservations. Answers that end together share
        one pipelined round trip; each waits for its own, so a slot is free once this returns."""
        slots = self.held.pop(decision.ticket, [])
        caps = [(c.key, d) for c, d in zip(decision.plan.caps, deltas, strict=True) if d]
        if not slots and not caps:
            return
        keys = [*slots, *(k for k, _ in caps)]
        args = [decision.ticket, len(slots), *(d for _, d in caps)]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(((keys, args), done))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.ensure_future(self._flush())
        await done

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # answers ending in this turn of the loop join the batch
        while self.pending:  # and those that end while a batch is on its way, the next one
            batch, self.pending = self.pending, []
            try:
                await self._send(batch)
            except BaseException as exc:  # every waiter learns it (a cancelled one is gone)
                failure = exc if isinstance(exc, Exception) else ConnectionError("cancelled")
                for _, done in batch:
                    if not done.done():
                        done.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _send(self, batch: list[tuple[tuple[list[str], list[Any]], Any]]) -> None:
        if len(batch) == 1:
            keys, args = batch[0][0]
            await self.settle(keys=keys, args=[",".join(map(str, args))])
            return
        # EVALSHA queued by hand: a cluster pipeline refuses scripts, and this spares the
        # SCRIPT EXISTS round trip a plain pipeline sends first. A cluster pipeline splits
        # the batch by node and sends the parts side by side.
        pipe = self.client.pipeline(transaction=False)
        for (keys, args), _ in batch:
            pipe.execute_command("EVALSHA", self.settle.sha, len(keys), *keys,
                                 ",".join(map(str, args)))
        results = await pipe.execute(raise_on_error=False)
        for ((keys, args), _), result in zip(batch, results, strict=True):
            if isinstance(result, self.no_script):  # a node without it (a promoted replica)
                await self.settle(keys=keys, args=[",".join(map(str, args))])  # loads, runs
            elif isinstance(result, Exception):
                raise result

    async def renew(self, now: float) -> None:
        """Pushes back the expiry of every lease this process holds (ZADD XX: never revives
        one already released)."""
        if not self.held:
            return
        expires = int((now + self.lease_ttl_s) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for ticket, keys in list(self.held.items()):
            for key in keys:
                pipe.zadd(key, {ticket: expires}, xx=True)
        await pipe.execute()

    async def close(self) -> None:
        if self.flusher is not None and not self.flusher.done():
            with contextlib.suppress(Exception):
                await self.flusher
        await self.client.aclose()


class Limiter:
    """Admission through Redis when configured (else memory); while Redis fails, `open` falls
    back to this process's memory and `closed` refuses with 503; Redis is retried by itself."""

    def __init__(self, state: StateConfig, clock: Callable[[], float] = time.time,
                 lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.clock, self.mode = clock, state.on_redis_error
        self.memory = MemoryBackend()
        self.redis = RedisBackend(state, lease_ttl_s) if state.backend == "redis" else None
        self.down_until = self.warned_at = -1e18
        self.retry_s = REDIS_RETRY_S

    async def admit(self, plan: Plan) -> Decision:
        now = self.clock()
        ticket = new_ticket()
        if self.redis is not None and time.monotonic() >= self.down_until:
            try:
                return await self.redis.admit(plan, ticket, now)
            except self.redis.errors as exc:
                self._failed(exc)
        if self.redis is not None and self.mode == "closed":
            raise GatewayError("upstream_unavailable", "The gateway's shared state (Redis) is "
                               "unreachable; limits cannot be checked.", status=503,
                               headers={"retry-after": str(int(REDIS_RETRY_S))})
        return await self.memory.admit(plan, ticket, now)

    async def finish(self, decision: Decision, deltas: list[int]) -> None:
        backend = decision.backend
        if backend is self.memory or self.redis is None:
            await self.memory.finish(decision, deltas)
            return
        try:
            await backend.finish(decision, deltas)
        except self.redis.errors as exc:
            self._failed(exc)  # the lease expires by itself; the spend is lost

    def _failed(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + self.retry_s
        now = time.monotonic()
        if now - self.warned_at >= WARN_EVERY_S:
            self.warned_at = now
            log.warning("shared_limits_unreachable", error=type(exc).__name__,
                        fallback="per-process memory limits" if self.mode == "open" else "503")

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: renews held leases while the app runs; closes the Redis client."""
        task = None
        if self.redis is not None:
            await redis_state.warm(self.redis.client, ADMIT_LUA, FINISH_LUA)
            task = asyncio.create_task(self._renew_forever())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.redis is not None:
            await self.redis.close()

    async def _renew_forever(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(self.redis.lease_ttl_s / 3)
            with contextlib.suppress(*self.redis.errors):
                await self.redis.renew(self.clock())
