"""The one Redis client factory: which client each config gets, and that what an unreachable
cluster or sentinel raises is a Redis error (open: memory, closed: 503), never a 500."""
from __future__ import annotations

from typing import Any

import pytest
from imagegate.config.errors import GatewayError
from imagegate.config.schema import RedisSentinel, StateConfig
from imagegate.middlewares import redis_state
from imagegate.middlewares.limits import Limiter, Plan, Window

from tests.redis_server import free_port

PLAN = Plan([Window("requests_per_minute", "imagegate:use:{k}:rpm", 5, 1)], [], [])


def nowhere(**state: Any) -> StateConfig:
    return StateConfig(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", **state)


async def test_each_config_gets_its_client() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    sentinel = RedisSentinel(service="svc", nodes=["127.0.0.1:1"])
    made = [redis_state.connect(s, connect_timeout_s=1, timeout_s=1) for s in (
        nowhere(), nowhere(redis_cluster=True), nowhere(redis_sentinel=sentinel))]
    assert [type(c) is Redis for c in made] == [True, False, False]
    assert isinstance(made[1], RedisCluster)
    assert made[2].connection_pool.service_name == "svc"
    for client in made:
        await client.aclose()


@pytest.mark.parametrize("extra", [{"redis_cluster": True},
                                   {"redis_sentinel": {"service": "svc", "nodes": ["h:1"]}}])
async def test_an_unreachable_cluster_or_sentinel_is_a_redis_outage(extra: dict[str, Any]
                                                                    ) -> None:
    if "redis_sentinel" in extra:
        extra = {"redis_sentinel": RedisSentinel(service="svc",
                                                 nodes=[f"127.0.0.1:{free_port()}"])}
    open_ = Limiter(nowhere(**extra))
    decision = await open_.admit(PLAN)  # refused connections: per-process memory answers
    assert decision.refused is None and decision.backend is open_.memory
    closed = Limiter(nowhere(on_redis_error="closed", **extra))
    with pytest.raises(GatewayError) as caught:
        await closed.admit(PLAN)
    assert caught.value.status == 503
    for limiter in (open_, closed):
        assert limiter.redis is not None
        await limiter.redis.close()


def test_cluster_exceptions_count_as_redis_errors() -> None:
    from redis import exceptions as e
    from redis.sentinel import MasterNotFoundError

    for exc in (e.ClusterDownError, e.MasterDownError, e.TryAgainError, e.SlotNotCoveredError,
                e.RedisClusterException, MasterNotFoundError, ConnectionRefusedError):
        assert issubclass(exc, redis_state.errors())
