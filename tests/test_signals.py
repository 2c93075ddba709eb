"""`imagegate serve` as a process: SIGHUP reloads the config file (an invalid one is refused with
one log line), SIGTERM drains (/readyz 503 at once, requests in flight and streams finish)."""
from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import GATEWAY_KEY
from tests.gateway_process import GatewayProcess, gateway_process
from tests.upstreams import openai as openai_mock

NEW_KEY = "ig-reloaded-key"


def write(path: Path, models: dict[str, Any], keys: list[dict[str, Any]],
          providers: dict[str, Any] | None = None, **extra: Any) -> Path:
    path.write_text(json.dumps({
        "auth": {"keys": keys}, "storage": {"path": str(path.parent / "images")},
        "providers": {"local": {"type": "local"}, **(providers or {})}, "models": models,
        **extra}))
    return path


def generate(gw: GatewayProcess, model: str, key: str) -> int:
    body = json.dumps({"model": model, "prompt": "a kite", "size": "32x32"}).encode()
    req = urllib.request.Request(f"{gw.base_url}/v1/images/generations", data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_events(gw: GatewayProcess, event: str, count: int, timeout_s: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in gw.log_events() if e.get("event") == event]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count} {event} lines: {gw.log()[-3000:]}")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_and_refuses_an_invalid_file(tmp_path: Path, workers: int) -> None:
    config = write(tmp_path / "imagegate.yaml", {"local": {"routes": [{"provider": "local"}]}},
                   [{"id": "team-a", "key": GATEWAY_KEY}])
    with gateway_process(tmp_path, config, ["--workers", str(workers)]) as gw:
        gw.wait_healthy(workers=workers)
        write(config, {"local": {"routes": [{"provider": "nowhere"}]}},
              [{"id": "team-b", "key": NEW_KEY}])
        gw.signal(signal.SIGHUP)
        [failed] = wait_events(gw, "config_reload_failed", 1)
        time.sleep(0.2)  # the workers would have logged theirs by now
        assert len([e for e in gw.log_events() if e["event"] == "config_reload_failed"]) == 1
        assert failed["path"] == "models.local.routes[0].provider"
        assert "unknown provider 'nowhere'" in failed["error"]
        assert generate(gw, "local", GATEWAY_KEY) == 200  # the old config serves on

        write(config, {"local": {"routes": [{"provider": "local"}]},
                       "sketch": {"routes": [{"provider": "local"}]}},
              [{"id": "team-b", "key": NEW_KEY}], fetch={"timeout_s": 5})
        gw.signal(signal.SIGHUP)
        reloaded = wait_events(gw, "config_reloaded", workers)
        assert len({e["pid"] for e in reloaded}) == workers  # every worker took it
        assert reloaded[0]["keys"] == {"total": 1, "added": 1, "removed": 1, "changed": 0}
        restart = wait_events(gw, "config_restart_needed", workers)
        assert restart[0]["settings"] == ["fetch"]  # --port wins over the file anyway
        for _ in range(4):  # new connections land on any worker
            assert generate(gw, "sketch", NEW_KEY) == 200
            assert generate(gw, "local", GATEWAY_KEY) == 401
        for _ in range(3):  # any worker's status page counts the whole machine's requests
            with urllib.request.urlopen(f"{gw.base_url}/status.json", timeout=5) as resp:
                status = json.loads(resp.read())
            assert status["workers"] == workers
            assert [(k["id"], k["requests_today"]) for k in status["keys"]] == [("team-b", 4)]
        assert NEW_KEY not in gw.log() and GATEWAY_KEY not in gw.log()
        assert gw.stop() == 0


async def readyz(session: aiohttp.ClientSession, gw: GatewayProcess) -> tuple[int, Any]:
    async with session.get(f"{gw.base_url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_sigterm_drains_requests_and_streams_in_flight(aiohttp_server: Any,
                                                             tmp_path: Path) -> None:
    recorder = openai_mock.Recorder(delay_s=0.5, stream_gap_s=0.5)
    upstream = await aiohttp_server(openai_mock.make_app(recorder))
    providers = {"openai": {"type": "openai", "api_key": openai_mock.API_KEY,
                            "base_url": str(upstream.make_url("")).rstrip("/")}}
    config = write(tmp_path / "imagegate.yaml", {"gpt-image-1": {"routes": [
        {"provider": "openai"}]}}, [], providers, server={"graceful_shutdown_s": 10})
    with gateway_process(tmp_path, config) as gw:
        gw.wait_healthy()
        async with aiohttp.ClientSession() as session:
            url = f"{gw.base_url}/v1/images/generations"
            body = {"model": "gpt-image-1", "prompt": "a kite"}
            plain = asyncio.create_task(session.post(url, json=body))
            stream = await session.post(url, json={**body, "stream": True})
            first = await stream.content.readuntil(b"\n\n")  # the stream has begun
            assert b"partial_image" in first and len(recorder.requests) == 2
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            assert await readyz(session, gw) == (503, {"status": "draining"})
            async with session.post(url, json={"model": "gpt-image-1", "prompt": "c"}) as refused:
                assert refused.status == 503 and refused.headers["retry-after"] == "1"
                assert refused.headers["connection"] == "close"
            async with session.get(f"{gw.base_url}/v1/models") as listed:  # GETs still answer
                assert listed.status == 200
            rest = await stream.content.read()
            assert b"image_generation.completed" in rest
            answer = await plain
            assert answer.status == 200 and len((await answer.json())["data"]) == 1
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        assert time.monotonic() - started < 5
        assert len(recorder.requests) == 2


async def test_sigterm_stops_after_graceful_shutdown_s(aiohttp_server: Any,
                                                       tmp_path: Path) -> None:
    recorder = openai_mock.Recorder(delay_s=30)
    upstream = await aiohttp_server(openai_mock.make_app(recorder))
    providers = {"openai": {"type": "openai", "api_key": openai_mock.API_KEY,
                            "base_url": str(upstream.make_url("")).rstrip("/")}}
    config = write(tmp_path / "imagegate.yaml", {"gpt-image-1": {"routes": [
        {"provider": "openai"}]}}, [], providers, server={"graceful_shutdown_s": 0.5})
    with gateway_process(tmp_path, config) as gw:
        gw.wait_healthy()
        async with aiohttp.ClientSession() as session:
            slow = asyncio.create_task(session.post(f"{gw.base_url}/v1/images/generations",
                                                    json={"model": "gpt-image-1", "prompt": "a"}))
            while not recorder.requests:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gw.proc.wait, 10) == 0
            assert time.monotonic() - started < 3
            with pytest.raises(aiohttp.ClientError):
                await (await slow).read()
        assert [e["event"] for e in gw.log_events() if e["event"].startswith("drain")] == [
            "draining", "drain_timeout"]
