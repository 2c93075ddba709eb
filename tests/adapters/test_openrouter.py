"""OpenRouter adapter: fixture coverage, size table and capabilities, then the mock upstream."""
from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from aiohttp import ClientSession
from imagegate.adapters import aspect, openrouter
from imagegate.adapters.base import (
    ImageRequest,
    UpstreamRequest,
    bearer,
)
from imagegate.config.errors import GatewayError
from PIL import Image

from tests.adapters.golden import KINDS, call, load_cases, real_image
from tests.upstreams.openrouter import API_KEY, PNG, Recorder, make_app

CASES = load_cases("openrouter")
AUTH = bearer(API_KEY)
OPENAI_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024",
                "1024x1792", "auto")


def test_fixtures_cover_every_kind_and_size() -> None:
    assert len(CASES) >= 70
    assert {case["kind"] for case in CASES.values()} == set(KINDS)
    sizes = {case["request"].get("size") for case in CASES.values() if case["kind"] == "encode"}
    assert set(OPENAI_SIZES) <= sizes


@pytest.mark.parametrize("size", sorted(aspect.SIZES))
def test_size_table_agrees_with_the_computed_rule(size: str) -> None:
    assert aspect.SIZES[size] == aspect.image_shape(size, None)[:2]


def test_adapter_declares_one_image_per_call() -> None:
    assert openrouter.ADAPTER.type == "openrouter"
    assert openrouter.CAPABILITIES.images_per_call == 1 and not openrouter.CAPABILITIES.mask
    assert openrouter.ADAPTER.auth_headers("k") == {"Authorization": "Bearer k"}
    assert openrouter.ADAPTER.policy is openrouter.POLICY


# --- against the mock upstream --------------------------------------------------------------

def request(**fields: Any) -> ImageRequest:
    fields.setdefault("operation", "generate")
    fields.setdefault("model", "google/gemini-3-pro-image")
    return ImageRequest(prompt="a fox", **fields)


async def test_mock_generation_returns_a_real_png(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = openrouter.encode_request(request(size="1792x1024", user="u-1"))
    result = openrouter.decode_response(await call(server, sent, AUTH))
    image = result.images[0]
    assert base64.b64decode(image.b64_json or "") == PNG and image.mime == "image/png"
    assert Image.open(io.BytesIO(PNG)).format == "PNG"
    seen = recorder.requests[0]
    assert (seen.path, seen.headers["Authorization"]) == ("/chat/completions", f"Bearer {API_KEY}")
    assert seen.json["image_config"] == {"aspect_ratio": "16:9", "image_size": "1K"}
    assert "stream" not in seen.json and seen.json["user"] == "u-1"
    assert result.usage is not None and result.usage.output_tokens_details == {
        "image_tokens": 1290, "text_tokens": 5}


async def test_mock_accepts_a_multi_image_edit(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    images = [real_image((255, 0, 0)), real_image((0, 0, 255), "JPEG")]
    sent = openrouter.encode_request(request(operation="edit", images=images, image_only=True))
    result = openrouter.decode_response(await call(server, sent, AUTH))
    assert len(result.images) == 1 and result.usage is not None
    assert result.usage.input_tokens == 12 + 2 * 258  # the mock counted both input images
    content = recorder.requests[0].json["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "image_url"]
    assert content[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert recorder.requests[0].json["modalities"] == ["image"]


async def test_mock_url_answer_is_downloadable(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder(mode="url")))
    sent = openrouter.encode_request(request())
    result = openrouter.decode_response(await call(server, sent, AUTH))
    url = result.images[0].url or ""
    assert url == str(server.make_url("/files/image_0.png"))
    async with ClientSession() as session, session.get(url) as answer:
        assert await answer.read() == PNG


@pytest.mark.parametrize("change", [{"stream": True}, {"image_config": {}},
                                    {"modalities": ["text"]}, {"n": 2}])
async def test_mock_refuses_what_the_adapter_never_sends(aiohttp_server: Any,
                                                         change: dict[str, Any]) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    good = openrouter.encode_request(request())
    bad = UpstreamRequest(path=good.path, body=json.dumps({**json.loads(good.body), **change})
                          .encode())
    with pytest.raises(GatewayError) as info:
        openrouter.decode_response(await call(server, bad, AUTH))
    assert info.value.code == "invalid_value"


@pytest.mark.parametrize(("mode", "code", "headers"), [
    ("text_only", "no_image", {}),
    ("empty_images", "no_image", {}),
    ("content_filter", "content_policy_violation", {}),
    ("auth", "upstream_auth_failed", {}),
    ("rate_limit", "upstream_rate_limited", {"retry-after": "4"}),
    ("quota", "insufficient_quota", {}),
    ("moderation", "content_policy_violation", {}),
    ("guardrail", "content_policy_violation", {}),
    ("refusal", "content_policy_violation", {}),
    ("region", "upstream_unavailable", {}),
    ("permission", "upstream_unavailable", {}),
    ("error_in_200", "upstream_unavailable", {}),
    ("not_found", "upstream_unavailable", {}),
    ("unavailable", "upstream_unavailable", {"retry-after": "4"}),
    ("bad_request", "invalid_value", {}),
    ("not_json", "upstream_unavailable", {}),
])
async def test_mock_faults(aiohttp_server: Any, mode: str, code: str,
                           headers: dict[str, str]) -> None:
    server = await aiohttp_server(make_app(Recorder(mode=mode)))
    answer = await call(server, openrouter.encode_request(request()), AUTH)
    with pytest.raises(GatewayError) as info:
        openrouter.decode_response(answer)
    assert (info.value.code, info.value.headers) == (code, headers)
    assert "a gory scene" not in info.value.message  # moderation's flagged_input stays upstream


@pytest.mark.parametrize("key", ["wrong", None])
async def test_mock_bad_or_missing_key_is_upstream_auth_failed(aiohttp_server: Any,
                                                               key: str | None) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    sent = openrouter.encode_request(request())
    answer = await call(server, sent, bearer(key) if key else {})
    assert answer.status == 401
    with pytest.raises(GatewayError) as info:
        openrouter.decode_response(answer)
    assert (info.value.status, info.value.code) == (502, "upstream_auth_failed")


@pytest.fixture
def learned(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    fresh: set[str] = set()
    monkeypatch.setattr(openrouter, "LEARNED_IMAGE_ONLY", fresh)
    return fresh


@pytest.mark.parametrize("model", ["black-forest-labs/flux.2-pro", "sourceful/riverflow-v2",
                                   "bytedance-seed/seedream-4.5", "openai/gpt-image-1"])
async def test_mock_image_only_models_are_asked_for_images_only(
        aiohttp_server: Any, learned: set[str], model: str) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = openrouter.encode_request(request(model=model))
    assert openrouter.decode_response(await call(server, sent, AUTH)).images
    assert recorder.requests[0].json["modalities"] == ["image"] and not learned


async def test_mock_unknown_image_only_model_is_retried_once_and_remembered(
        aiohttp_server: Any, learned: set[str]) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    req = request(model="acme/pixels-only")
    answer = await call(server, openrouter.encode_request(req), AUTH)
    assert answer.status == 404  # "No endpoints found that support ... image, text"
    again = openrouter.retry(req, answer)
    assert again is not None and learned == {"acme/pixels-only"}
    assert openrouter.decode_response(await call(server, again, AUTH)).images
    assert [r.json["modalities"] for r in recorder.requests] == [["image", "text"], ["image"]]
    # remembered: the next call asks for ["image"] straight away, and a 404 is not retried
    assert json.loads(openrouter.encode_request(req).body)["modalities"] == ["image"]
    assert openrouter.retry(req, answer) is None


async def test_other_404s_are_not_retried(aiohttp_server: Any, learned: set[str]) -> None:
    server = await aiohttp_server(make_app(Recorder(mode="not_found")))
    req = request()
    answer = await call(server, openrouter.encode_request(req), AUTH)
    assert answer.status == 404 and openrouter.retry(req, answer) is None and not learned


@pytest.mark.parametrize(("size", "config"), [
    ("512x512", {"aspect_ratio": "1:1", "image_size": "0.5K"}),
    ("4096x1024", {"aspect_ratio": "4:1", "image_size": "2K"}),
    ("1024x8192", {"aspect_ratio": "1:8", "image_size": "2K"}),
])
async def test_mock_gemini_31_flash_takes_half_k_and_extended_ratios(
        aiohttp_server: Any, size: str, config: dict[str, str]) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    for model in ("google/gemini-3.1-flash-image", "google/gemini-3-pro-image"):
        sent = openrouter.encode_request(request(model=model, size=size))
        assert openrouter.decode_response(await call(server, sent, AUTH)).images
    flash, pro = (r.json["image_config"] for r in recorder.requests)
    assert flash == config and pro["aspect_ratio"] in aspect.ASPECT_RATIOS
