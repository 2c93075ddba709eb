"""Shared state through a failover: a Redis Cluster primary killed by its PID (its replica takes
over) and a Sentinel-managed primary switched with SENTINEL FAILOVER. The gateways keep serving;
during the gap state.on_redis_error applies (open: per-process memory, closed: 503)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from structlog.testing import capture_logs

from tests.conftest import make_config
from tests.redis_cluster import admin, redis_cluster, sentinel_pair, wait_for

KEY = "imagegate:use:{fo}:rpm"
AUTH = {"Authorization": "Bearer ig-fo"}


def config(state: dict[str, Any]) -> Any:
    keys = [{"id": "fo", "key": "ig-fo", "limits": {"requests_per_minute": 1000}}]
    return make_config({"auth": {"keys": keys}, "state": {"backend": "redis", **state}})


async def generate(client: Any) -> tuple[int, Any]:
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "local", "prompt": "kite", "size": "32x32"})
    return resp.status, await resp.json()


async def written_to(port: int, clients: list[Any], timeout_s: float = 15) -> None:
    """Until a request through each client lands in the Redis on `port` (not in memory)."""
    deadline = time.monotonic() + timeout_s
    for client in clients:
        while True:
            before = admin(port).zcard(KEY)
            status, _ = await generate(client)
            assert status in (200, 503)  # 503: a closed gateway still waiting to retry Redis
            if status == 200 and admin(port).zcard(KEY) == before + 1:
                break
            assert time.monotonic() < deadline, "the gateway did not come back to Redis"
            await asyncio.sleep(0.2)


async def test_a_cluster_primary_killed_is_replaced_and_the_gateways_keep_serving(
        gateway: Any, tmp_path: Any) -> None:
    with redis_cluster(tmp_path / "redis", replicas=1) as cluster:
        state = {"redis_url": cluster.url, "redis_cluster": True}
        open_gw = await gateway(config(state))
        closed_gw = await gateway(config({**state, "on_redis_error": "closed"}))
        owner = cluster.owner(KEY)
        await written_to(owner, [open_gw, closed_gw])
        cluster.servers.kill(owner)
        with capture_logs() as logs:  # the gap, before the replica is promoted
            assert (await generate(open_gw))[0] == 200  # counted in this process's memory
            status, body = await generate(closed_gw)
        assert status == 503 and body["error"]["code"] == "upstream_unavailable"
        assert [e["fallback"] for e in logs if e["event"] == "shared_limits_unreachable"] == [
            "per-process memory limits", "503"]
        wait_for(lambda: cluster.is_ok() and cluster.owner(KEY) != owner, "the promotion")
        promoted = cluster.owner(KEY)
        assert admin(promoted).zcard(KEY) >= 2  # what the old primary had, replicated
        await written_to(promoted, [open_gw, closed_gw])
        ready = await open_gw.get("/readyz")  # its PING reaches the promoted map
        assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_the_gateway_follows_a_sentinel_failover(gateway: Any, tmp_path: Any) -> None:
    with sentinel_pair(tmp_path) as pair:
        sentinel = {"service": pair.service, "nodes": [f"127.0.0.1:{pair.sentinel}"]}
        client = await gateway(config({"redis_url": "redis://127.0.0.1/0",
                                        "redis_sentinel": sentinel}))
        first = pair.primary()
        await written_to(first, [client])
        promoted = pair.failover()
        assert promoted != first
        # the sentinel demotes a live old primary when it next looks at it (every 10 s); done
        # here at once: the gateway's writes there then fail READONLY and it asks the sentinel
        admin(first).execute_command("REPLICAOF", "127.0.0.1", str(promoted))
        await written_to(promoted, [client])
        assert admin(first).execute_command("ROLE")[0] == b"slave"
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["status"] == "ready"
