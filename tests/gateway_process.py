"""`imagegate serve` as a child process on a free loopback port, stopped by its PID."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.redis_server import free_port


def wait_healthy(port: int, proc: subprocess.Popen[bytes], workers: int = 1,
                 timeout_s: float = 20, detail: Callable[[], str] = lambda: "") -> None:
    """Until `workers` different processes have answered /healthz."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the gateway exited: {detail()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                seen.add(json.loads(resp.read())["pid"])
            if len(seen) >= workers:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{workers} workers did not come up")


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc, self.port, self.log_path = proc, port, log_path
        self.base_url = f"http://127.0.0.1:{port}"

    def wait_healthy(self, workers: int = 1, timeout_s: float = 20) -> None:
        wait_healthy(self.port, self.proc, workers, timeout_s,
                     detail=lambda: self.log()[-2000:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def gateway_process(workdir: Path, config: Path, extra: Sequence[str] = (),
                    name: str = "gateway") -> Iterator[GatewayProcess]:
    port = free_port()
    log_path = workdir / f"{name}.log"
    out: IO[bytes] = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate", "serve", "--config", str(config), "--port",
         str(port), *extra],
        cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    gateway = GatewayProcess(proc, port, log_path)
    try:
        yield gateway
    finally:
        gateway.stop()
        out.close()
