"""The status page in a real browser: headless Chromium loads it from a gateway process that has
served traffic, and the rendered DOM shows the models, the routes and a resting route."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from tests.gateway_process import gateway_process
from tests.redis_server import free_port
from tests.test_prometheus import KEYS, post


class Rows(HTMLParser):
    """The <tr> rows of each table, as {attribute: value} plus their cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.table: str | None = None
        self.row: dict[str, str] | None = None
        self.cells: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.table = dict(attrs).get("id") or ""
            self.tables[self.table] = []
        elif tag == "tr" and self.table is not None:
            self.row, self.cells = {k: v or "" for k, v in attrs}, []
        elif tag == "td" and self.row is not None:
            self.cells.append("")

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.cells:
            self.cells[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.row is not None and self.table is not None:
            if self.cells:
                self.tables[self.table].append({**self.row, "text": " | ".join(self.cells)})
            self.row = None


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (.ci/run installs it with apt)"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60)


def test_chromium_renders_models_routes_and_a_resting_route(tmp_path: Path) -> None:
    config = tmp_path / "imagegate.yaml"
    config.write_text(json.dumps({
        "storage": {"path": str(tmp_path / "images")},
        "routing": {"cooldown_s": 300},
        "auth": {"keys": [{"id": "team-a", "key": KEYS["team-a"],
                           "budget": {"usd_per_day": 1, "images_per_day": 100}}]},
        "providers": {"local": {"type": "local"},
                      "upstream": {"type": "openai", "api_key": "sk-x",
                                   "base_url": f"http://127.0.0.1:{free_port()}/v1"}},
        "models": {"local": {"routes": [{"provider": "local",
                                         "price": {"per_image": 0.01}}]},
                   "gpt-image-1": {"routes": [{"provider": "upstream"},
                                              {"provider": "local", "priority": 1}]},
                   "seedream": {"routes": [{"provider": "upstream", "model": "seedream-4"}]}},
    }))
    with gateway_process(tmp_path, config) as gw:
        gw.wait_healthy()
        statuses = [post(gw.base_url, m, "team-a") for m in ["local"] * 4 + ["seedream"] * 4]
        assert statuses == [200] * 4 + [502] * 3 + [503]  # seedream's only route rests
        url = f"{gw.base_url}/status"
        dom = chromium("--dump-dom", url, profile=tmp_path / "profile")
        shot = tmp_path / "status.png"
        chromium("--window-size=1280,1100", f"--screenshot={shot}", url,
                 profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Rows()
    page.feed(dom.stdout)
    routes = page.tables["routes"]
    assert [(r["data-model"], r["data-provider"], r["data-state"]) for r in routes] == [
        ("local", "local", "healthy"), ("gpt-image-1", "upstream", "healthy"),
        ("gpt-image-1", "local", "healthy"), ("seedream", "upstream", "resting")]
    resting = routes[-1]["text"]
    assert "seedream-4" in resting and "resting until" in resting
    assert "upstream_unavailable" in resting
    traffic = {r["data-model"]: r["text"] for r in page.tables["traffic"]}
    assert "502: 75.0%" in traffic["seedream"] and "503: 25.0%" in traffic["seedream"]
    assert [r["data-provider"] for r in page.tables["providers"]] == ["local", "upstream"]
    [key] = page.tables["keys"]  # 4 images at $0.01; the failures cost nothing
    assert key["data-key"] == "team-a"
    assert key["text"] == ("team-a | 8 | 4 | $0.0400 | usd_per_day: $0.96 left of $1.00 · "
                           "images_per_day: 96 left of 100")
    assert shot.stat().st_size > 10_000 and shot.read_bytes().startswith(b"\x89PNG")
