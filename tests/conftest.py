"""Shared fixtures: configs, the gateway app on loopback, mock upstreams, a no-network guard."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from imagegate.config.loader import parse_config
from imagegate.config.schema import Config
from imagegate.proxy.app import create_app
from prometheus_client import CollectorRegistry

from tests.upstreams import openai as openai_mock

# gateway processes the tests start (`python -m imagegate`) run this checkout's code, wherever
# their working directory is and whatever copy is installed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

GATEWAY_KEY = "ig-test-key-team-a"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOOPBACK and name is not None:
            raise socket.gaierror(f"tests are offline: {name} refused")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def make_config(overrides: dict[str, Any] | None = None, *, tmp_path: Any = None,
                providers: dict[str, Any] | None = None,
                models: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {
        "providers": {"local": {"type": "local"}, **(providers or {})},
        "models": {"local": {"routes": [{"provider": "local"}]}, **(models or {})},
        "fetch": {"allow_private_hosts": ["127.0.0.1"]},
    }
    if tmp_path is not None:
        data["storage"] = {"path": str(tmp_path / "images"), "signing_secret": "s3cret"}
    overrides = dict(overrides or {})
    # port 0: hosted links follow the test server's own address
    data["server"] = {"port": 0, **overrides.pop("server", {})}
    data.update(overrides)
    return parse_config(data, env={})


@pytest.fixture
async def openai_upstream(aiohttp_server: Any) -> tuple[openai_mock.Recorder, str]:
    recorder = openai_mock.Recorder()
    server = await aiohttp_server(openai_mock.make_app(recorder))
    return recorder, str(server.make_url("")).rstrip("/")


def openai_models(base_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    providers = {"openai": {"type": "openai", "base_url": base_url,
                            "api_key": openai_mock.API_KEY}}
    models = {
        "gpt-image-1": {"routes": [{"provider": "openai"}]},
        "house-image": {"routes": [{"provider": "openai", "model": "gpt-image-1"}],
                        "aliases": ["house"]},
    }
    return providers, models


@pytest.fixture
def gateway(aiohttp_client: Any, tmp_path: Any) -> Callable[..., Any]:
    """Starts create_app(config) on loopback; returns an aiohttp TestClient."""

    async def start(config: Config | None = None, **kwargs: Any) -> Any:
        registry = CollectorRegistry()
        app = create_app(config or make_config(tmp_path=tmp_path), registry=registry, **kwargs)
        client = await aiohttp_client(app)
        client.registry = registry
        return client

    return start
