"""Golden fixture cases from tests/fixtures/<provider>, run against every adapter module."""
from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import msgspec
import pytest
from imagegate.adapters import ark, gemini, openrouter, zai
from imagegate.adapters.base import ImageRequest
from imagegate.config.errors import GatewayError

from tests.adapters.golden import assert_error, cases, load_cases, plain, upstream_response

ADAPTERS: dict[str, ModuleType] = {"ark": ark, "zai": zai, "openrouter": openrouter,
                                   "gemini": gemini}


def golden(kind: str) -> list[Any]:
    """(adapter module, case) params for one kind, with ids like ark-<case name>."""
    return [pytest.param(module, *param.values, id=f"{name}-{param.id}")
            for name, module in ADAPTERS.items()
            for param in cases(load_cases(name), kind)]


@pytest.mark.parametrize(("adapter", "case"), golden("encode"))
def test_encode(adapter: ModuleType, case: dict[str, Any]) -> None:
    sent = adapter.encode_request(msgspec.convert(case["request"], ImageRequest))
    assert sent.path == case["expected"]["path"]
    assert (sent.method, sent.content_type) == ("POST", "application/json")
    assert json.loads(sent.body) == case["expected"]["body"]
    assert list(sent.dropped) == case["expected"]["dropped"]


@pytest.mark.parametrize(("adapter", "case"), golden("encode_error"))
def test_encode_error(adapter: ModuleType, case: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        adapter.encode_request(msgspec.convert(case["request"], ImageRequest))
    assert_error(info.value, case["error"])


@pytest.mark.parametrize(("adapter", "case"), golden("decode"))
def test_decode(adapter: ModuleType, case: dict[str, Any]) -> None:
    result = adapter.decode_response(upstream_response(case["response"]))
    assert plain(msgspec.to_builtins(result)) == case["expected"]


@pytest.mark.parametrize(("adapter", "case"), golden("decode_error"))
def test_decode_error(adapter: ModuleType, case: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        adapter.decode_response(upstream_response(case["response"]))
    assert_error(info.value, case["error"])


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-image-1", True), ("gpt-image-1-mini", True), ("gpt-image-1.5", True),
    ("gpt-image-2", True), ("gpt-image-2-2026-04-21", True), ("gpt-image-2.5-mini", True),
    ("chatgpt-image-latest", True), ("GPT-Image-2", True), ("openai/gpt-image-2", True),
    ("dall-e-2", False), ("dall-e-3", False), ("gpt-4o", False), ("my-gpt-image-1", False),
    ("gpt-imagery", False),
])
def test_gpt_image_models_are_recognised(model: str, expected: bool) -> None:
    from imagegate.adapters.openai import is_gpt_image_model

    assert is_gpt_image_model(model) is expected
