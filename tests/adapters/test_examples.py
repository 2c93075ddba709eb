"""config/examples/full.yaml ships no route that cannot work: each adapted route's request, as
the adapter encodes it, is answered with an image by that provider's mock."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from imagegate.adapters import ark, gemini, openrouter, zai
from imagegate.adapters.base import ImageRequest
from imagegate.config.loader import load_config

from tests.adapters.golden import call
from tests.upstreams import ark as ark_mock
from tests.upstreams import gemini as gemini_mock
from tests.upstreams import openrouter as or_mock
from tests.upstreams import zai as zai_mock

FULL = Path(__file__).parents[2] / "config" / "examples" / "full.yaml"
ADAPTED: dict[str, tuple[ModuleType, Any]] = {
    "ark": (ark, ark_mock), "gemini": (gemini, gemini_mock),
    "openrouter": (openrouter, or_mock), "zai": (zai, zai_mock),
}
ENV = ("OPENAI_API_KEY", "ARK_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY", "ZAI_API_KEY",
       "TEAM_A_KEY")


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    for name in ENV:
        monkeypatch.setenv(name, "k")
    config = load_config(FULL)
    return [(public, config.providers[route.provider].type, route.model or public)
            for public, model in config.models.items() for route in model.routes
            if config.providers[route.provider].type in ADAPTED]


@pytest.mark.parametrize("size", [None, "auto", "1024x1024", "1536x1024", "1024x1792"])
async def test_every_adapted_route_in_full_yaml_answers(aiohttp_server: Any, routes: Any,
                                                        size: str | None) -> None:
    assert {kind for _, kind, _ in routes} == set(ADAPTED)
    for public, kind, model in routes:
        adapter, mock = ADAPTED[kind]
        server = await aiohttp_server(mock.make_app(mock.Recorder()))
        sent = adapter.encode_request(ImageRequest(operation="generate", model=model,
                                                   prompt="a fox", size=size))
        answer = await call(server, sent, adapter.ADAPTER.auth_headers(mock.API_KEY))
        assert adapter.decode_response(answer).images, (public, model, answer.body[:200])
