"""Redis as shared state: hosted images readable from any gateway, readiness follows Redis."""
from __future__ import annotations

from typing import Any

from tests.conftest import make_config
from tests.redis_server import redis_server
from tests.schemas import checked_sdk


async def test_url_images_live_in_redis_and_readyz_follows_it(gateway: Any, tmp_path: Any,
                                                                aiohttp_client: Any) -> None:
    with redis_server(tmp_path) as url:
        overrides = {"state": {"backend": "redis", "redis_url": url},
                     "storage": {"backend": "redis", "signing_secret": "shared"}}
        first = await gateway(make_config(overrides))
        second = await gateway(make_config(overrides))  # another machine, same Redis
        assert (await first.get("/readyz")).status == 200
        sdk = checked_sdk(str(first.make_url("/v1")), "x")
        result = await sdk.images.generate(model="local", prompt="kite", size="64x64",
                                           response_format="url")
        await sdk.close()
        path = result.data[0].url.split("/", 3)[3]
        resp = await second.get("/" + path)
        assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")
    resp = await first.get("/readyz")  # state.on_redis_error: open (the default) keeps serving
    assert resp.status == 200
    assert await resp.json() == {"status": "degraded", "degraded": ["redis (state, storage)"]}


async def test_a_route_rested_on_one_gateway_rests_on_all(gateway: Any, tmp_path: Any,
                                                          openai_upstream: Any) -> None:
    from imagegate.proxy.gateway import GATEWAY

    from tests.upstreams.openai import API_KEY

    recorder, base = openai_upstream
    recorder.mode = "server_error"
    with redis_server(tmp_path) as url:
        config = make_config(
            {"state": {"backend": "redis", "redis_url": url}, "routing": {"cooldown_s": 30}},
            providers={"openai": {"type": "openai", "base_url": base, "api_key": API_KEY}},
            models={"gpt-image-1": {"routes": [{"provider": "openai"}]}})
        first, second = await gateway(config), await gateway(config)
        body = {"model": "gpt-image-1", "prompt": "p"}
        for _ in range(3):
            assert (await first.post("/v1/images/generations", json=body)).status == 502
        assert (await first.post("/v1/images/generations", json=body)).status == 503
        calls = len(recorder.requests)
        await second.app[GATEWAY].shared.sync_once()  # the poll every gateway runs each second
        resp = await second.post("/v1/images/generations", json=body)
        assert resp.status == 503 and int(resp.headers["retry-after"]) > 25
        assert len(recorder.requests) == calls  # the second gateway did not call the rested route
