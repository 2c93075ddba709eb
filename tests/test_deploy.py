"""The container and compose files: what they wire together is consistent, and where docker is
installed the image builds and compose accepts the file."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from imagegate.config.loader import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "config/deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV = {"IMAGEGATE_SIGNING_SECRET": "0" * 64}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mounted(service: dict, target: str) -> Path:
    """The file of this repository that the service mounts at `target`."""
    for volume in service["volumes"]:
        source, dest = volume.split(":")[:2]
        if dest == target:
            path = (DEPLOY / source).resolve()
            assert path.exists(), volume
            return path
    raise AssertionError(f"nothing is mounted at {target}")


def docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if done.returncode != 0:
        return "the docker daemon is not reachable: " + done.stderr.strip().splitlines()[-1]
    return None


def test_two_gateways_share_one_redis_behind_one_load_balancer(monkeypatch) -> None:
    services = compose()["services"]
    gateways = [services["gateway-a"], services["gateway-b"]]
    for gw in gateways:
        assert gw["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / gw["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
        config_path = mounted(gw, gw["environment"]["IMAGEGATE_CONFIG"])
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config = load_config(str(config_path))
    assert (config.state.backend, config.storage.backend) == ("redis", "redis")
    assert config.state.redis_url.startswith("redis://redis:")
    nginx = mounted(services["lb"], "/etc/nginx/nginx.conf").read_text()
    backends = re.findall(r"server (\S+:\d+)", nginx)
    expected = [f"gateway-{x}:{config.server.port}" for x in "ab"]
    assert backends == expected
    prometheus = yaml.safe_load(
        mounted(services["prometheus"], "/etc/prometheus/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == expected
    assert mounted(services["prometheus"], "/etc/prometheus/rules.yml").name == "rules.yml"


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    source = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((provisioning / "dashboards/imagegate.yaml").read_text())
    folder = dashboards["providers"][0]["options"]["path"]
    assert mounted(grafana, f"{folder}/imagegate.json").name == "imagegate.json"


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (.ci/run installs prometheus with apt)"
    done = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_builds() -> None:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(["docker", "build", "-q", "-t", "imagegate:test", str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def test_compose_accepts_the_file() -> None:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr
