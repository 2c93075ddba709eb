"""Gemini adapter: golden cases from tests/fixtures/gemini, then the mock upstream."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import ClientSession
from PIL import Image

from adapters import gemini
from adapters.base import ImageRequest, InputImage, UpstreamRequest, UpstreamResponse
from config.errors import GatewayError
from tests.upstreams.gemini import API_KEY, DRAFT_PNG, FINAL_PNG, JPEG, Recorder, make_app

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"
CASES = {path.stem: json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))}
KINDS = ("encode", "encode_error", "decode", "decode_error")
OPENAI_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024",
                "1024x1792", "auto")
MODEL = "gemini-2.5-flash-image"


def cases(kind: str) -> list[Any]:
    return [pytest.param(case, id=name) for name, case in CASES.items() if case["kind"] == kind]


def upstream_response(spec: dict[str, Any]) -> UpstreamResponse:
    body = spec["body_text"].encode() if "body_text" in spec else json.dumps(spec["body"]).encode()
    return UpstreamResponse(status=spec["status"], body=body, headers=spec["headers"],
                            received_at=spec["received_at"])


def plain(value: Any) -> Any:
    """Builtins without the None fields, so fixtures list only what an answer carries."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None}
    return [plain(v) for v in value] if isinstance(value, list) else value


def assert_error(exc: GatewayError, expected: dict[str, Any]) -> None:
    assert (exc.status, exc.code, exc.param) == (expected["status"], expected["code"],
                                                 expected["param"])
    if "headers" in expected:
        assert exc.headers == expected["headers"]
    assert all(text in exc.message for text in expected.get("message_has", []))
    assert not any(text in exc.message for text in expected.get("message_lacks", []))


def test_fixtures_cover_every_kind_size_and_finish_reason() -> None:
    assert len(CASES) >= 75
    assert {case["kind"] for case in CASES.values()} == set(KINDS)
    sizes = {case["request"].get("size") for case in CASES.values() if case["kind"] == "encode"}
    assert set(OPENAI_SIZES) <= sizes
    assert {f"finish_{reason.lower()}" for reason in gemini.SAFETY_FINISH} <= set(CASES)


@pytest.mark.parametrize("case", cases("encode"))
def test_encode(case: dict[str, Any]) -> None:
    sent = gemini.encode_request(msgspec.convert(case["request"], ImageRequest))
    assert sent.path == case["expected"]["path"]
    assert (sent.method, sent.content_type) == ("POST", "application/json")
    assert json.loads(sent.body) == case["expected"]["body"]
    assert list(sent.dropped) == case["expected"]["dropped"]


@pytest.mark.parametrize("case", cases("encode_error"))
def test_encode_error(case: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        gemini.encode_request(msgspec.convert(case["request"], ImageRequest))
    assert_error(info.value, case["error"])


@pytest.mark.parametrize("case", cases("decode"))
def test_decode(case: dict[str, Any]) -> None:
    result = gemini.decode_response(upstream_response(case["response"]))
    assert plain(msgspec.to_builtins(result)) == case["expected"]


@pytest.mark.parametrize("case", cases("decode_error"))
def test_decode_error(case: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(upstream_response(case["response"]))
    assert_error(info.value, case["error"])


def test_adapter_uses_the_goog_key_header() -> None:
    assert gemini.ADAPTER.type == "gemini"
    assert gemini.CAPABILITIES.images_per_call == 1 and not gemini.CAPABILITIES.mask
    assert gemini.ADAPTER.auth_headers("k") == {"x-goog-api-key": "k"}
    assert gemini.ADAPTER.policy is gemini.POLICY


# --- against the mock upstream --------------------------------------------------------------

def real_image(color: tuple[int, int, int], fmt: str = "PNG") -> InputImage:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, fmt)
    return InputImage(data=out.getvalue(), mime=f"image/{fmt.lower()}", filename="in")


async def call(server: Any, sent: UpstreamRequest, key: str | None = API_KEY,
               prefix: str = "") -> UpstreamResponse:
    headers = {**(gemini.auth_headers(key) if key else {}), "Content-Type": sent.content_type}
    async with ClientSession() as session:
        async with session.post(server.make_url(prefix + sent.path), data=sent.body,
                                headers=headers) as answer:
            return UpstreamResponse(status=answer.status, body=await answer.read(),
                                    headers={k.lower(): v for k, v in answer.headers.items()},
                                    received_at=1700000000)


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
    result = gemini.decode_response(await call(server, sent))
    assert decoded(result) == FINAL_PNG and result.images[0].mime == "image/png"
    assert result.images[0].revised_prompt == "Here is your image:"
    assert result.created == 1700000000
    seen = recorder.requests[0]
    assert seen.path == f"/models/{MODEL}:generateContent"
    assert seen.headers["x-goog-api-key"] == API_KEY and "Authorization" not in seen.headers
    assert seen.json["generationConfig"]["imageConfig"] == {"aspectRatio": "9:16",
                                                            "imageSize": "2K"}


async def test_mock_thought_images_are_skipped(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder(mode="thought")))
    sent = gemini.encode_request(request(model="gemini-3-pro-image-preview"))
    result = gemini.decode_response(await call(server, sent))
    assert len(result.images) == 1 and decoded(result) == FINAL_PNG != DRAFT_PNG
    assert result.images[0].revised_prompt == "Here is the final image."
    assert result.usage is not None and result.usage.output_tokens == 1296 + 200
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


async def test_mock_accepts_a_multi_image_edit(aiohttp_server: Any) -> None:
    recorder = Recorder(mode="jpeg")
    server = await aiohttp_server(make_app(recorder))
    images = [real_image((255, 0, 0), "JPEG"), real_image((0, 0, 255))]
    sent = gemini.encode_request(request(operation="edit", images=images, image_only=True))
    result = gemini.decode_response(await call(server, sent, prefix="/v1beta"))
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
        gemini.decode_response(await call(server, bad))
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
    answer = await call(server, gemini.encode_request(request()))
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(answer)
    assert (info.value.code, info.value.headers) == (code, headers)


@pytest.mark.parametrize(("key", "status"), [("wrong", 400), (None, 403)])
async def test_mock_bad_or_missing_key_is_upstream_auth_failed(
        aiohttp_server: Any, key: str | None, status: int) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    answer = await call(server, gemini.encode_request(request()), key=key)
    assert answer.status == status
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(answer)
    assert (info.value.status, info.value.code) == (502, "upstream_auth_failed")
    assert "API key" not in info.value.message


async def test_mock_unknown_model_is_upstream_unavailable(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    answer = await call(server, gemini.encode_request(request(model="gemini-foo")))
    assert answer.status == 404
    with pytest.raises(GatewayError) as info:
        gemini.decode_response(answer)
    assert (info.value.status, info.value.code) == (502, "upstream_unavailable")
