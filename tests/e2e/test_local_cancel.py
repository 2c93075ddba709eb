"""A client that hangs up on `local` renders: they stop before their next image, and hold
their place under max_concurrency until their thread has ended."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from imagegate.proxy.reload import GENERATIONS
from structlog.testing import capture_logs

from tests.conftest import make_config

BODY = {"model": "local", "prompt": "a slow cat", "n": 10, "size": "1536x1536"}


async def until(check: Any, limit_s: float = 30.0) -> float:
    started = time.perf_counter()
    while not check():
        assert time.perf_counter() - started < limit_s
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def test_a_hang_up_stops_the_render_and_the_cap_holds_until_it_ends(
        gateway: Any, tmp_path: Any) -> None:
    config = make_config({"providers": {"local": {"type": "local", "max_concurrency": 1}}},
                         tmp_path=tmp_path)
    client = await gateway(config)
    state = client.server.app[GENERATIONS].current.gateway.upstream.providers["local"]
    started = time.perf_counter()
    whole = await client.post("/v1/images/generations", json=BODY)
    assert whole.status == 200 and len((await whole.json())["data"]) == 10
    full_s = time.perf_counter() - started

    with capture_logs() as logs:
        hung = asyncio.ensure_future(client.post("/v1/images/generations", json=BODY))
        await until(lambda: state.in_flight == 1)
        hung.cancel()  # the client hangs up
        await asyncio.sleep(0.01)
        busy = await client.post("/v1/images/generations", json={**BODY, "n": 1})
        assert busy.status == 429  # the stopped render still holds the only place
        assert (await busy.json())["error"]["code"] == "upstream_busy"
        released_s = await until(lambda: state.in_flight == 0)
    assert released_s < full_s / 2  # stopped before its next image, not after all ten
    assert [e["outcome"] for e in logs if e["event"] == "upstream"][0] == "cancelled"
    ok = await client.post("/v1/images/generations", json={**BODY, "n": 1, "size": "64x64"})
    assert ok.status == 200
