"""Gemini adapter: fixture coverage and capabilities, then round trips through the mock upstream."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from imagegate.adapters import gemini
from imagegate.adapters.base import ImageRequest, UpstreamRequest
from imagegate.config.errors import GatewayError

from tests.adapters.golden import KINDS, call, load_cases, real_image
from tests.upstreams.gemini import API_KEY, DRAFT_PNG, FINAL_PNG, JPEG, Recorder, make_app

CASES = load_cases("gemini")
OPENAI_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024",
                "1024x1792", "auto")
MODEL = "gemini-3-pro-image"
AUTH = gemini.auth_headers(API_KEY)
NOW = 1700000000  # received_at stamped on a mock answer, so its created is checkable


def test_fixtures_cover_every_kind_size_and_finish_reason() -> None:
    assert len(CASES) >= 75
    assert {case["kind"] for case in CASES.values()} == set(KINDS)
    sizes = {case["request"].get("size") for case in CASES.values() if case["kind"] == "encode"}
    assert set(OPENAI_SIZES) <= sizes
    assert {f"finish_{reason.lower()}" for reason in gemini.SAFETY_FINISH} <= set(CASES)


def test_adapter_uses_the_goog_key_header() -> None:
    assert gemini.ADAPTER.type == "gemini"
    assert gemini.CAPABILITIES.images_per_call == 1 and not gemini.CAPABILITIES.mask
    assert gemini.ADAPTER.auth_headers("k") == {"x-goog-api-key": "k"}
    assert gemini.ADAPTER.policy is gemini.POLICY


# --- against the mock upstream --------------------------------------------------------------

def request(**fields: Any) -> ImageRequest:
    fields.setdefault("operation", "generate")
    fields.setdefault("model", MODEL)
    return ImageRequest(prompt="a fox", **fields)


def decoded(result: Any, index: int = 0) -> bytes:
    return base64.b64decode(result.images[index].b64_json or "")


async def test_mock_generation_returns_a_real_png(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = gemini.encode_request(request(size="1024x1792", quality="high"))
    result = gemini.decode_response(await call(server, sent, AUTH, received_at=NOW))
    assert decoded(result) == FINAL_PNG and result.images[0].mime == "image/png"
    assert result.images[0].revised_prompt == "Here is your image:"
    assert result.created == NOW
    seen = recorder.requests[0]
    assert seen.path == f"/models/{MODEL}:generateContent"
    assert seen.headers["x-goog-api-key"] == API_KEY and "Authorization" not in seen.headers
    # 1024x1792 is 1.8 MP: the 1K tier (~1 MP), not 2K (~4 MP); quality beside a size is named
    assert seen.json["generationConfig"]["imageConfig"] == {"aspectRatio": "9:16",
                                                            "imageSize": "1K"}
    assert sent.dropped == ("quality",)


async def test_mock_thought_images_are_skipped(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder(mode="thought")))
    sent = gemini.encode_request(request(model="gemini-3-pro-image"))
    result = gemini.decode_response(await call(server, sent, AUTH))
    assert len(result.images) == 1 and decoded(result) == FINAL_PNG != DRAFT_PNG
    assert result.images[0].revised_prompt == "Here is the final image."
    assert result.usage is not None and result.usage.output_tokens == 1296 + 200
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


async def test_mock_accepts_a_multi_image_edit(aiohttp_server: Any) -> None:
    recorder = Recorder(mode="jpeg")
    server = await aiohttp_server(make_app(recorder))
    images = [real_image((255, 0, 0), "JPEG"), real_image((0, 0, 255))]
    sent = gemini.encode_request(request(operation="edit", images=images, image_only=True))
    result = gemini.decode_response(await call(server, sent, AUTH, prefix="/v1beta"))
    assert decoded(result) == JPEG and result.images[0].mime == "image/jpeg"
    assert result.usage is not None and result.usage.input_tokens_details == {
        "image_tokens": 516, "text_tokens": 12}
    parts = recorder.requests[0].json["contents"][0]["parts"]
    assert [part["inlineData"]["mimeType"] for part in parts[1:]] == ["image/jpeg", "image/png"]
    assert recorder.requests[0].json["generationConfig"]["responseModalities"] == ["IMAGE"]


@pytest.mark.parametrize("change", [{"generationConfig": {"responseModalities": ["TEXT"]}},
                                    {"generation_config": {}}, {"candidateCount": 2}])
async def test_mock_refuses_what_the_adapter_never_sends(aiohttp_server: Any,
                                                         change: dict[str, Any]) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    good = gemini.encode_request(request())
    bad = UpstreamRequest(path=good.path, body=json.dumps({**json.loads(good.body), **change})
                          .encode())
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(await call(server, bad, AUTH))
    assert info.value.code == "invalid_value"


@pytest.mark.parametrize(("mode", "code", "headers"), [
    ("text_only", "no_image", {}),
    ("no_image", "no_image", {}),
    ("block_reason", "content_policy_violation", {}),
    ("image_safety", "content_policy_violation", {}),
    ("auth", "upstream_auth_failed", {}),
    ("rate_limit", "upstream_rate_limited", {"retry-after": "2"}),
    ("not_found", "upstream_unavailable", {}),
    ("unavailable", "upstream_unavailable", {}),
    ("internal", "upstream_unavailable", {}),
    ("deadline", "upstream_timeout", {}),
    ("bad_request", "invalid_value", {}),
])
async def test_mock_faults(aiohttp_server: Any, mode: str, code: str,
                           headers: dict[str, str]) -> None:
    server = await aiohttp_server(make_app(Recorder(mode=mode)))
    answer = await call(server, gemini.encode_request(request()), AUTH)
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(answer)
    assert (info.value.code, info.value.headers) == (code, headers)


@pytest.mark.parametrize(("key", "status"), [("wrong", 400), (None, 403)])
async def test_mock_bad_or_missing_key_is_upstream_auth_failed(
        aiohttp_server: Any, key: str | None, status: int) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    headers = gemini.auth_headers(key) if key else {}
    answer = await call(server, gemini.encode_request(request()), headers)
    assert answer.status == status
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(answer)
    assert (info.value.status, info.value.code) == (502, "upstream_auth_failed")
    assert "API key" not in info.value.message


async def test_mock_unknown_model_is_upstream_unavailable(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    answer = await call(server, gemini.encode_request(request(model="gemini-foo")), AUTH)
    assert answer.status == 404
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(answer)
    assert (info.value.status, info.value.code) == (502, "upstream_unavailable")


@pytest.mark.parametrize(("model", "size", "config"), [
    ("gemini-3.1-flash-image", "512x512", {"aspectRatio": "1:1", "imageSize": "512"}),
    ("gemini-3.1-flash-image", "1024x4096", {"aspectRatio": "1:4", "imageSize": "2K"}),
    ("gemini-3.1-flash-image", "1792x1024", {"aspectRatio": "16:9", "imageSize": "1K"}),
    ("gemini-3-pro-image", "512x512", {"aspectRatio": "1:1", "imageSize": "1K"}),
    ("gemini-3-pro-image", "2752x1536", {"aspectRatio": "16:9", "imageSize": "2K"}),
    ("gemini-3.1-flash-lite-image", "4096x1024", {"aspectRatio": "21:9", "imageSize": "2K"}),
])
async def test_mock_takes_each_models_own_tiers_and_ratios(aiohttp_server: Any, model: str,
                                                           size: str,
                                                           config: dict[str, str]) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = gemini.encode_request(request(model=model, size=size))
    assert gemini.decode_response(await call(server, sent, AUTH)).images
    assert recorder.requests[0].json["generationConfig"]["imageConfig"] == config


@pytest.mark.parametrize("model", ["gemini-2.5-flash-image", "gemini-3-pro-image-preview",
                                   "gemini-3.1-flash-image-preview"])
async def test_mock_shut_down_models_are_not_found(aiohttp_server: Any, model: str) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(await call(server, gemini.encode_request(request(model=model)),
                                          AUTH))
    assert info.value.code == "upstream_unavailable"  # a fallback route may still serve it
