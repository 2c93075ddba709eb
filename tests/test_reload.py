"""A reloaded config takes effect for new requests at once; requests in flight finish on the
config they started with; rests of unchanged routes are kept; restart-only settings stay."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from imagegate.proxy.reload import GENERATIONS
from openai import AsyncOpenAI, AuthenticationError, NotFoundError
from structlog.testing import capture_logs

from tests.conftest import GATEWAY_KEY, make_config, openai_models
from tests.redis_server import free_port
from tests.upstreams import openai as openai_mock

DEAD = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there

NEW_KEY = "ig-test-key-team-b"


def config(tmp_path: Any, openai_url: str, *, keys: list[dict[str, Any]] | None = None,
           models: dict[str, Any] | None = None, dead_url: str | None = None,
           **overrides: Any) -> Any:
    providers, base_models = openai_models(openai_url)
    providers["dead"] = {"type": "openai", "api_key": openai_mock.API_KEY,
                         "base_url": dead_url or DEAD}
    base_models["broken"] = {"routes": [{"provider": "dead", "model": "dall-e-3"}]}
    return make_config({"auth": {"keys": keys or [{"id": "team-a", "key": GATEWAY_KEY}]},
                        "routing": {"cooldown_s": 300}, **overrides}, tmp_path=tmp_path,
                       providers=providers, models={**base_models, **(models or {})})


def sdk(client: Any, key: str = GATEWAY_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


async def test_new_keys_and_models_serve_at_once_and_the_log_counts_them(
        gateway: Any, tmp_path: Any, openai_upstream: Any) -> None:
    _, url = openai_upstream
    client = await gateway(config(tmp_path, url))
    new = config(tmp_path, url, keys=[{"id": "team-b", "key": NEW_KEY, "models": ["sketch"]}],
                 models={"sketch": {"routes": [{"provider": "local"}]}})
    with capture_logs() as logs:
        client.server.app[GENERATIONS].reload(new)
    old_api, new_api = sdk(client), sdk(client, NEW_KEY)
    with pytest.raises(AuthenticationError):
        await old_api.models.list()
    assert [m.id for m in (await new_api.models.list()).data] == ["sketch"]
    answer = await new_api.images.generate(model="sketch", prompt="a kite", size="64x64")
    assert answer.data[0].b64_json
    [line] = [e for e in logs if e["event"] == "config_reloaded"]
    assert line["keys"] == {"total": 1, "added": 1, "removed": 1, "changed": 0}
    assert line["models"] == {"total": 5, "added": 1, "removed": 0, "changed": 0}
    assert line["routes"]["added"] == 1 and line["providers"]["changed"] == 0
    assert NEW_KEY not in str(logs) and GATEWAY_KEY not in str(logs)
    await old_api.close()
    await new_api.close()


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
        gateway: Any, tmp_path: Any, openai_upstream: Any) -> None:
    recorder, url = openai_upstream
    recorder.delay_s = 0.5
    client = await gateway(config(tmp_path, url))
    api = sdk(client)
    slow = asyncio.create_task(api.images.generate(model="gpt-image-1", prompt="a kite"))
    while not recorder.requests:
        await asyncio.sleep(0.01)
    # the new config drops the model and points its provider elsewhere
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client.server.app[GENERATIONS].reload(make_config(
        {"auth": {"keys": [{"id": "team-a", "key": GATEWAY_KEY}]}}, tmp_path=tmp_path,
        providers={"openai": {"type": "openai", "base_url": dead, "api_key": "sk-y"}}))
    answer = await slow
    assert answer.data[0].b64_json and len(recorder.requests) == 1
    with pytest.raises(NotFoundError):
        await api.images.generate(model="gpt-image-1", prompt="a kite")
    await api.close()


async def test_rests_of_unchanged_routes_are_kept_changed_ones_start_afresh(
        gateway: Any, tmp_path: Any, openai_upstream: Any) -> None:
    _, url = openai_upstream
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client = await gateway(config(tmp_path, url, dead_url=dead))
    for _ in range(3):  # three failures rest (dead, dall-e-3)
        resp = await client.post("/v1/images/generations", json={"model": "broken", "prompt": "x"},
                                 headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
        assert resp.status == 502
    generations = client.server.app[GENERATIONS]
    with capture_logs() as logs:  # another model added: the route did not change
        generations.reload(config(tmp_path, url, dead_url=dead,
                                  models={"extra": {"routes": [{"provider": "local"}]}}))
    assert [e["health_kept"] for e in logs if e["event"] == "config_reloaded"] == [3]
    resp = await client.post("/v1/images/generations", json={"model": "broken", "prompt": "x"},
                             headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
    assert resp.status == 503  # still resting: no upstream attempt
    status = await (await client.get("/status.json")).json()
    [broken] = [m for m in status["models"] if m["name"] == "broken"]
    assert broken["routes"][0]["state"] == "resting"
    # the provider now points at a working upstream: its pairs start afresh
    generations.reload(config(tmp_path, url, dead_url=url))
    resp = await client.post("/v1/images/generations", json={"model": "broken", "prompt": "x"},
                             headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
    assert resp.status == 200


async def test_restart_only_settings_are_named_and_kept(gateway: Any, tmp_path: Any,
                                                        openai_upstream: Any) -> None:
    _, url = openai_upstream
    client = await gateway(config(tmp_path, url))
    generations = client.server.app[GENERATIONS]
    before = generations.current.config
    changed = config(tmp_path, url, server={"port": 9999, "public_base_url": "https://img.x"},
                     storage={"path": str(tmp_path / "elsewhere")})
    with capture_logs() as logs:
        generations.reload(changed)
    [warning] = [e for e in logs if e["event"] == "config_restart_needed"]
    assert warning["log_level"] == "warning"
    assert warning["settings"] == ["server.port", "storage"]
    now = generations.current.config
    assert (now.server.port, now.storage) == (before.server.port, before.storage)
    assert now.server.public_base_url == "https://img.x"  # reloadable: taken


async def test_admin_keys_reload(gateway: Any, tmp_path: Any, openai_upstream: Any) -> None:
    import hashlib

    _, url = openai_upstream
    client = await gateway(config(tmp_path, url))
    assert (await client.get("/metrics")).status == 200
    digest = hashlib.sha256(b"admin-2").hexdigest()
    client.server.app[GENERATIONS].reload(config(tmp_path, url, server={"admin_keys": [digest]}))
    assert (await client.get("/metrics")).status == 401
    ok = await client.get("/metrics", headers={"Authorization": "Bearer admin-2"})
    assert ok.status == 200


async def test_limit_counters_carry_over_a_reload(gateway: Any, tmp_path: Any,
                                                  openai_upstream: Any) -> None:
    _, url = openai_upstream

    def limited(rpm: int) -> Any:
        return config(tmp_path, url, keys=[{"id": "team-a", "key": GATEWAY_KEY,
                                            "limits": {"requests_per_minute": rpm}}])

    client = await gateway(limited(2))
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    body = {"model": "local", "prompt": "a kite", "size": "16x16"}

    async def status() -> int:
        resp = await client.post("/v1/images/generations", json=body, headers=headers)
        return int(resp.status)

    assert [await status() for _ in range(2)] == [200, 200]
    client.server.app[GENERATIONS].reload(limited(3))  # one more a minute, same window
    assert [await status() for _ in range(2)] == [200, 429]


async def test_shared_rests_reach_the_reloaded_router(gateway: Any, tmp_path: Any,
                                                      openai_upstream: Any) -> None:
    from tests.redis_server import redis_server

    recorder, url = openai_upstream
    recorder.mode = "server_error"
    with redis_server(tmp_path) as redis_url:
        def shared(**models: Any) -> Any:
            return make_config(
                {"state": {"backend": "redis", "redis_url": redis_url}}, tmp_path=tmp_path,
                providers={"openai": {"type": "openai", "base_url": url,
                                      "api_key": openai_mock.API_KEY}},
                models={"gpt-image-1": {"routes": [{"provider": "openai"}]}, **models})

        fresh = {"routes": [{"provider": "openai", "model": "dall-e-3"}]}
        first, second = await gateway(shared(fresh=fresh)), await gateway(shared())
        generations = second.server.app[GENERATIONS]
        generations.reload(shared(fresh=fresh))  # a pair the second gateway had not routed
        body = {"model": "fresh", "prompt": "p"}
        for _ in range(3):  # the first gateway rests (openai, dall-e-3) for everyone
            assert (await first.post("/v1/images/generations", json=body)).status == 502
        shared_rests = generations.current.gateway.shared
        assert shared_rests is not None
        await shared_rests.sync_once()  # the poll every gateway runs each second
        calls = len(recorder.requests)
        assert (await second.post("/v1/images/generations", json=body)).status == 503
        assert len(recorder.requests) == calls
