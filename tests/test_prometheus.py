"""A real Prometheus scrapes two gateway processes: every PromQL expression of the Grafana
dashboard and of the alerting rules parses and returns data."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from tests.gateway_process import GatewayProcess, gateway_process
from tests.prometheus_server import Prometheus, prometheus_server
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "config/deploy/grafana/imagegate.json"
RULES = ROOT / "config/deploy/prometheus/rules.yml"
# what Grafana puts in place of its variables when "All" is chosen
GRAFANA_VARS = {"$model": ".*", "$provider": ".*", "$key": ".*", "$__rate_interval": "1m",
                "$__interval": "5s"}
LABEL_VALUES = re.compile(r"label_values\((?P<match>.+),\s*(?P<label>\w+)\)")
KEYS = {"team-a": "ig-prom-key-a", "team-b": "ig-prom-key-b"}
PRICE = {"per_image": 0.01}
THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+\s*$")


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def grafana_substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARS[name])
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def gateway_config(tmp_path: Path) -> Path:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: every attempt fails
    config = {
        "server": {"graceful_shutdown_s": 1},
        "storage": {"path": str(tmp_path / "images")},
        "routing": {"cooldown_s": 300, "max_attempts": 2},
        "providers": {"local": {"type": "local"},
                      "openai": {"type": "openai", "base_url": dead, "api_key": "sk-x",
                                 "connect_timeout_s": 1}},
        "models": {
            "local": {"routes": [{"provider": "local", "price": PRICE}]},
            "fallback": {"routes": [{"provider": "openai", "model": "gpt-image-1"},
                                    {"provider": "local", "priority": 1}]},  # unpriced
            "broken": {"routes": [{"provider": "openai", "model": "dall-e-3"}]},
        },
        "auth": {"keys": [
            {"id": "team-a", "key": KEYS["team-a"], "budget": {"usd_per_day": 0.05}},
            {"id": "team-b", "key": KEYS["team-b"], "limits": {"requests_per_minute": 100}},
        ]},
    }
    path = tmp_path / "imagegate.yaml"
    path.write_text(json.dumps(config))
    return path


def post(base_url: str, model: str, key: str | None = None, **headers: str) -> int:
    body = json.dumps({"model": model, "prompt": "a red kite", "size": "32x32"}).encode()
    if key:
        headers["Authorization"] = f"Bearer {KEYS[key]}"
    req = urllib.request.Request(f"{base_url}/v1/images/generations", data=body,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def drive_traffic(gateway: GatewayProcess) -> list[int]:
    url = gateway.base_url
    # team-a: $0.05 a day at $0.01 an image: five answers, then 429 budget_exceeded
    calls = [("local", "team-a")] * 7 + [("fallback", "team-b")] * 4 + [
        ("no-such-model", "team-b")] * 2
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda c: post(url, *c), calls))
    statuses += [post(url, "local", "team-b", **{"Idempotency-Key": "k1"}) for _ in range(2)]
    # one at a time: three failures (502) rest the route, then it is skipped (503)
    return statuses + [post(url, "broken", "team-b") for _ in range(4)]


def has_data(prom: Prometheus, expr: str) -> tuple[bool, str]:
    found = LABEL_VALUES.fullmatch(expr)
    if found:  # a Grafana variable query: the label must have values on that metric
        answer = prom.api(f"label/{found['label']}/values", **{"match[]": found["match"]})
        return answer["status"] == "success" and bool(answer["data"]), json.dumps(answer)[:300]
    answer = prom.query(expr)
    ok = answer["status"] == "success" and bool(answer["data"]["result"])
    return ok, json.dumps(answer)[:300]


def wait_for_data(prom: Prometheus, exprs: list[str], timeout_s: float = 15) -> dict[str, str]:
    """The expressions still without data when the time is up, with Prometheus' answer."""
    missing = {e: "" for e in exprs}
    deadline = time.monotonic() + timeout_s
    while missing and time.monotonic() < deadline:
        for expr in list(missing):
            ok, answer = has_data(prom, expr)
            if ok:
                del missing[expr]
            else:
                missing[expr] = answer
        if missing:
            time.sleep(0.5)
    return missing


@pytest.fixture
def two_gateways_scraped(tmp_path: Path) -> Iterator[tuple[Prometheus, list[GatewayProcess]]]:
    config = gateway_config(tmp_path)
    with ExitStack() as stack:
        gateways = [stack.enter_context(gateway_process(tmp_path, config, name=f"gw{i}"))
                    for i in range(2)]
        prom = stack.enter_context(prometheus_server(
            tmp_path, [f"127.0.0.1:{g.port}" for g in gateways], [RULES]))
        for g in gateways:
            g.wait_healthy()
        yield prom, gateways


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (.ci/run installs prometheus with apt)"
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_and_alert_expression_returns_data(
    two_gateways_scraped: tuple[Prometheus, list[GatewayProcess]],
) -> None:
    prom, gateways = two_gateways_scraped
    for g in gateways:
        statuses = drive_traffic(g)
        assert {200, 404, 429, 502, 503}.issubset(statuses), statuses
    dashboard = [grafana_substitute(e) for e in dashboard_exprs()]
    # an alert's condition needs an incident; what it compares must exist without one
    signals = [THRESHOLD.sub("", e) for e in rule_exprs()]
    missing = wait_for_data(prom, dashboard + signals)
    assert not missing, "\n".join(f"{e}\n  -> {a}" for e, a in missing.items())
    # the incidents this traffic caused fire their alerts: a resting route, 5xx share
    for g in gateways:  # errors on series Prometheus has seen before count in rate()
        assert post(g.base_url, "broken", "team-b") == 503
    # ...and fire: a resting route, the 5xx share, a key out of budget
    firing = [e for e in rule_exprs() if not e.startswith("up") and "quantile" not in e]
    assert len(firing) == 3 and not wait_for_data(prom, firing)
    for expr in rule_exprs():  # the full expressions parse too
        assert prom.query(expr)["status"] == "success", expr
    gateways[1].stop()  # and a gateway that is gone is "down"
    down = [e for e in rule_exprs() if e.startswith("up")]
    assert len(down) == 1 and not wait_for_data(prom, down, timeout_s=10)
    rules = prom.api("rules")["data"]["groups"][0]["rules"]
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}


