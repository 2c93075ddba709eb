"""Requests built to multiply memory stay within the request budget: the gateway runs as its own
process and its peak RSS (VmHWM) is read before and after each one."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from tests.redis_server import free_port
from tests.upstreams import ark as ark_mock

BUDGET = 48 * 1024 * 1024
SLACK = 8 * 1024 * 1024  # "a few MB": buffers, allocator arenas
BIG = 7 * 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def noise_png(nbytes: int) -> bytes:
    side = int((nbytes / 3) ** 0.5)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG",
                                                                            compress_level=0)
    return out.getvalue()


@pytest.fixture
async def gateway_process(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(BIG - 8)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="image/png")

    files = web.Application()
    files.router.add_get("/img/{i}.png", serve)
    images = await aiohttp_server(files)
    ark_app = ark_mock.make_app(ark_mock.Recorder())
    ark_app._client_max_size = 64 * 1024 * 1024  # the mock takes what Ark would (10 MB images)
    ark = await aiohttp_server(ark_app)
    port = free_port()
    config = {
        "server": {"port": port, "request_budget_bytes": BUDGET,
                   "max_request_bytes": 40 * 1024 * 1024},
        "fetch": {"allow_private_hosts": ["127.0.0.1"]},
        "providers": {"ark": {"type": "ark", "base_url": str(ark.make_url("")).rstrip("/"),
                              "api_key": ark_mock.API_KEY}},
        "models": {"seedream": {"routes": [{"provider": "ark",
                                            "model": "doubao-seedream-4-0-250828"}]}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "imagegate", "serve", "--config", str(path)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                async with session.get(base + "/healthz"):
                    break
            except aiohttp.ClientError:
                time.sleep(0.05)
        yield session, base, proc.pid, str(images.make_url("/img"))
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


async def edit_form(session: aiohttp.ClientSession, base: str, image: bytes, n: int) -> Any:
    form = aiohttp.FormData()
    form.add_field("model", "seedream")
    form.add_field("prompt", "a cat")
    form.add_field("n", str(n))
    form.add_field("image", io.BytesIO(image), filename="a.png", content_type="image/png")
    return await session.post(base + "/v1/images/edits", data=form)


async def test_budget_busting_requests_stay_within_the_budget(gateway_process: Any) -> None:
    session, base, pid, images = gateway_process
    warm = await edit_form(session, base, noise_png(100_000), 2)  # imports, pools, Pillow
    assert warm.status == 200, await warm.text()
    baseline, rises = peak_rss(pid), []

    urls = [{"image_url": f"{images}/{i}.png"} for i in range(16)]  # a < 1 KB body, 112 MiB
    resp = await session.post(base + "/v1/images/edits", json={
        "model": "seedream", "prompt": "a cat", "images": urls})
    assert resp.status == 413, await resp.text()
    assert (await resp.json())["error"]["code"] == "request_too_large"
    rises.append(peak_rss(pid) - baseline)
    assert rises[-1] <= BUDGET + SLACK

    resp = await edit_form(session, base, noise_png(20 * 1024 * 1024), 10)  # 20 MiB, n=10
    assert resp.status == 413, await resp.text()
    rises.append(peak_rss(pid) - baseline)
    assert rises[-1] <= BUDGET + SLACK

    resp = await edit_form(session, base, noise_png(6 * 1024 * 1024), 10)  # fits: one body
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["data"]) == 10
    rises.append(peak_rss(pid) - baseline)
    assert rises[-1] <= BUDGET + SLACK
    print("peak RSS rises (MiB):", [round(r / 2**20, 1) for r in rises])
