"""The one way to a Redis for shared state: one server, a Redis Cluster, or a Sentinel's primary."""
from __future__ import annotations

import functools
from typing import Any

from imagegate.config.schema import StateConfig

MAX_CONNECTIONS = 65536  # per cluster node: in practice the open-file limit bounds them


def connect(state: StateConfig, *, connect_timeout_s: float | None,
            timeout_s: float | None) -> Any:
    """A redis.asyncio client (Redis or RedisCluster); nothing connects before its first command.
    redis is imported here only: a gateway without Redis never pays its start-up time and RSS."""
    timeouts = {"socket_connect_timeout": connect_timeout_s, "socket_timeout": timeout_s}
    if state.redis_cluster:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # MOVED/ASK are followed and the slot map refreshed; a node that is gone makes the
        # client re-read the map from another node, twice (not redis-py's 10: with a hung
        # node that is 10 timeouts in one admission), then state.on_redis_error applies.
        # Connections per node as many as commands in flight, as the single-server client
        # has: redis-py's cluster default of 100 refuses the 101st with MaxConnectionsError
        # (it does not wait), which would send a burst to per-process memory.
        return _cluster_class().from_url(state.redis_url, retry=Retry(NoBackoff(), 2),
                                         max_connections=MAX_CONNECTIONS, **timeouts)
    if state.redis_sentinel is not None:
        return _sentinel_primary(state, timeouts)
    import redis.asyncio as redis

    return redis.from_url(state.redis_url, **timeouts)


async def warm(client: Any, *scripts: str) -> None:
    """Before the first request: a cluster client reads the slot map now (redis-py 8.1 loses
    connections, and may run a command twice, when a burst of commands arrives while it
    first maps the cluster), and the scripts are loaded (on every primary of a cluster), so
    a burst does not send one SCRIPT LOAD per command. Failures wait for the first request."""
    try:
        if state_is_cluster(client):
            await client.initialize()
        for script in scripts:
            await client.script_load(script)
    except errors():
        pass


def state_is_cluster(client: Any) -> bool:
    return isinstance(client, _cluster_class())


def errors() -> tuple[type[Exception], ...]:
    """What an unreachable or failing-over Redis raises: connection and timeout errors,
    CLUSTERDOWN, TRYAGAIN, MasterNotFoundError (all RedisError), the cluster client's own
    RedisClusterException (a slot map it cannot read, a slot not covered) and OSError."""
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError)


@functools.cache
def _cluster_class() -> Any:
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster
    from redis.exceptions import ConnectionError

    lost = "a cluster connection was closed under a command (redis-py's refresh race)"

    class StatePipeline(ClusterPipeline):
        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().execute(*args, **kwargs)
            except AttributeError as exc:
                raise ConnectionError(lost) from exc

    class StateCluster(RedisCluster):
        """redis-py 8.1's cluster client closes a node's idle connections after an error on
        that node while another command may just have taken one: that command then fails
        with AttributeError on the closed socket (seen in 1 of ~3000 commands of a burst),
        before a byte of it was sent. Made a ConnectionError inside the client's retry loop,
        it is retried on a fresh connection like any lost connection."""

        async def _execute_command(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super()._execute_command(*args, **kwargs)
            except AttributeError as exc:
                self._initialize = True  # as redis-py does for a lost connection
                raise ConnectionError(lost) from exc

        def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
            if shard_hint:
                return super().pipeline(transaction, shard_hint)  # refused there
            return StatePipeline(self, transaction)  # type: ignore[abstract]

    return StateCluster


def _sentinel_primary(state: StateConfig, timeouts: dict[str, float | None]) -> Any:
    import redis.asyncio as redis
    from redis.asyncio.connection import SSLConnection, parse_url
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    assert state.redis_sentinel is not None
    found = parse_url(state.redis_url)  # host and port are the sentinels' to say
    primary: dict[str, Any] = {k: v for k, v in found.items() if k in ("db", "username",
                                                                       "password")}
    if found.get("connection_class") is SSLConnection:
        primary["ssl"] = True
    # a sentinel that does not answer is passed over for the next at once (redis-py's default
    # backs off for seconds); the primary gets one reconnect, to the one the sentinels name now
    sentinels: dict[str, Any] = {**timeouts, "retry": Retry(NoBackoff(), 0)}
    primary["retry"] = Retry(NoBackoff(), 1)
    if state.redis_sentinel.password:
        sentinels["password"] = state.redis_sentinel.password
    manager = Sentinel(state.redis_sentinel.addresses(), sentinel_kwargs=sentinels,  # type: ignore[no-untyped-call]
                       **timeouts)

    class SentinelPrimary(redis.Redis):
        """Follows the primary the sentinels name (a write to a demoted one reconnects);
        closing it closes the sentinel connections too."""

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            await super().aclose(close_connection_pool)
            await manager.aclose()

    return manager.master_for(state.redis_sentinel.service, redis_class=SentinelPrimary,
                              **primary)
