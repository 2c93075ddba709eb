"""Z.AI adapter: fixture coverage, capabilities and sizes, then round trips through the mock."""
from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiohttp import ClientSession
from imagegate.adapters import zai
from imagegate.adapters.base import ImageRequest, UpstreamRequest, bearer
from imagegate.config.errors import GatewayError
from PIL import Image

from tests.adapters.golden import KINDS, call, load_cases
from tests.upstreams.zai import API_KEY, Recorder, make_app

CASES = load_cases("zai")
AUTH = bearer(API_KEY)


def test_fixtures_cover_every_kind() -> None:
    assert len(CASES) >= 55
    assert {case["kind"] for case in CASES.values()} == set(KINDS)


def test_adapter_is_generation_only() -> None:
    caps = zai.ADAPTER.capabilities
    assert (zai.ADAPTER.type, caps.generate, caps.edit, caps.mask) == ("zai", True, False, False)
    assert caps.images_per_call == 1
    assert zai.ADAPTER.auth_headers("k") == {"Authorization": "Bearer k"}


@pytest.mark.parametrize("family", [zai.GLM_IMAGE, zai.COGVIEW])
def test_every_preset_is_a_valid_size(family: zai.Family) -> None:
    for preset in family.presets:
        assert zai.encode_size(preset, family) == (preset, False)


# --- against the mock upstream --------------------------------------------------------------

def request(**fields: Any) -> ImageRequest:
    fields.setdefault("model", "cogview-4-250304")
    return ImageRequest(operation="generate", prompt="a cat on a windowsill", **fields)


async def test_mock_url_answer_downloads(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = zai.encode_request(request(quality="high", user="user-123456", size="1536x1024"))
    result = zai.decode_response(await call(server, sent, AUTH))
    assert recorder.requests[0].json["watermark_enabled"] is False
    async with ClientSession() as session, session.get(result.images[0].url or "") as answer:
        assert answer.status == 200
        assert Image.open(io.BytesIO(await answer.read())).format == "PNG"


@pytest.mark.parametrize("fields", [
    {"model": "glm-image", "size": "512x512", "quality": "low"},
    {"model": "glm-image", "size": "1000x1500"},
    {"size": "2048x2048", "user": "abc"},
    {"size": "256x256", "quality": "medium"},
])
async def test_mock_accepts_every_mapped_request(aiohttp_server: Any,
                                                 fields: dict[str, Any]) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    sent = zai.encode_request(request(**fields))
    assert sent.dropped  # each of these needed a mapping
    assert zai.decode_response(await call(server, sent, AUTH)).images


@pytest.mark.parametrize(("body", "param"), [
    ({"size": "1000x1000"}, "size"),
    ({"quality": "medium"}, "quality"),
    ({"n": 1}, "n"),
])
async def test_mock_refuses_what_the_adapter_never_sends(aiohttp_server: Any,
                                                         body: dict[str, Any],
                                                         param: str) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    good = zai.encode_request(request())
    bad = UpstreamRequest(path=good.path, body=json.dumps({**json.loads(good.body), **body})
                          .encode())
    with pytest.raises(GatewayError) as info:
        zai.decode_response(await call(server, bad, AUTH))
    assert info.value.code == "invalid_value"
    assert info.value.param == (param if param != "n" else None)


@pytest.mark.parametrize(("mode", "status", "code"), [
    ("empty", 502, "no_image"),
    ("safety", 400, "content_policy_violation"),
    ("auth", 502, "upstream_auth_failed"),
    ("rate_limit", 429, "upstream_rate_limited"),
    ("arrears", 402, "insufficient_quota"),
    ("bad_param", 400, "invalid_value"),
    ("model_not_found", 502, "upstream_unavailable"),
    ("server_error", 502, "upstream_unavailable"),
    ("not_json", 502, "upstream_unavailable"),
])
async def test_mock_faults(aiohttp_server: Any, mode: str, status: int, code: str) -> None:
    server = await aiohttp_server(make_app(Recorder(mode=mode)))
    answer = await call(server, zai.encode_request(request()), AUTH)
    with pytest.raises(GatewayError) as info:
        zai.decode_response(answer)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.headers == ({"retry-after": "5"} if mode == "rate_limit" else {})


async def test_mock_unknown_model_and_wrong_key(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    with pytest.raises(GatewayError) as info:
        sent = zai.encode_request(request(model="cogview-9"))
        zai.decode_response(await call(server, sent, AUTH))
    assert info.value.code == "upstream_unavailable"
    with pytest.raises(GatewayError) as info:
        zai.decode_response(await call(server, zai.encode_request(request()), bearer("wrong")))
    assert info.value.code == "upstream_auth_failed"
