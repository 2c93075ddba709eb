"""`imagegate serve` as a process: the default config answers, workers share signed links."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.gateway_process import wait_healthy
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as resp:
        return json.loads(resp.read())


def test_two_workers_serve_each_others_links(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "IMAGEGATE_STORAGE_PATH": str(tmp_path / "images")}
    proc = subprocess.Popen([sys.executable, "-m", "imagegate", "serve", "--port", str(port),
                             "--workers", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_healthy(port, proc, workers=2)
        base = f"http://127.0.0.1:{port}"
        answer = post_json(f"{base}/v1/images/generations",
                           {"model": "local", "prompt": "kite", "size": "32x32",
                            "response_format": "url"})
        url = answer["data"][0]["url"]
        assert url.startswith(base + "/v1/images/files/")
        for _ in range(8):  # new connections land on either worker
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200 and resp.read().startswith(b"\x89PNG")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    time.sleep(0.3)
    leftovers = subprocess.run(["ps", "-o", "pid,cmd", "-g", str(proc.pid), "--no-headers"],
                               capture_output=True, text=True)
    alive = [line for line in leftovers.stdout.splitlines() if "<defunct>" not in line]
    assert alive == []  # SIGTERM to the parent stops every worker


def test_a_dead_worker_is_replaced_not_the_gateway_stopped(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "gateway.out"
    with open(out, "wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "imagegate", "serve", "--port",
                                 str(port), "--workers", "2"], cwd=tmp_path, stdout=stdout,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        before = wait_workers(port, proc, 2)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the gateway stopped"
            now = workers_of(proc.pid)
            if len(now) == 2 and before[0] not in now:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the dead worker was not replaced")
        wait_healthy(port, proc)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    events = {e["event"]: e for e in lines}
    assert events["worker_died"]["pid"] == before[0] and events["worker_died"]["exitcode"] == -9
    assert events["worker_restarting"]["after_s"] == 0.1 and "worker_restarted" in events
    assert lines[-1]["event"] == "shutdown" and lines[-1]["reason"] == "signal SIGTERM"


def workers_of(pid: int) -> list[int]:
    """The supervisor's worker processes (its spawned children, not multiprocessing helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            found.append(int(entry.name))
    return found


def wait_workers(port: int, proc: subprocess.Popen[bytes], count: int) -> list[int]:
    """Until the supervisor has `count` workers and the port answers; their pids."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = workers_of(proc.pid)
        if len(found) == count:
            wait_healthy(port, proc)
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} workers did not come up")
