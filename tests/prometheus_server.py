"""A real Prometheus on a free loopback port, scraping given targets every second."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.redis_server import free_port


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the parse error
            answer = json.loads(exc.read())
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)


@contextmanager
def prometheus_server(workdir: Path, targets: Sequence[str],
                      rule_files: Sequence[Path] = ()) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (.ci/run installs it with apt)")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "900ms"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "imagegate", "static_configs": [{"targets": targets}]}],
    }))
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, "prometheus exited"
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("prometheus did not become ready")
        yield Prometheus(base)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
