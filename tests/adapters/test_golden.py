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
