"""Z.AI adapter: golden cases from tests/fixtures/zai, then round trips through the mock."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import ClientSession
from PIL import Image

from adapters import zai
from adapters.base import ImageRequest, UpstreamRequest, UpstreamResponse, bearer
from config.errors import GatewayError
from tests.upstreams.zai import API_KEY, Recorder, make_app

FIXTURES = Path(__file__).parent.parent / "fixtures" / "zai"
CASES = {path.stem: json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))}
KINDS = ("encode", "encode_error", "decode", "decode_error")


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


def test_fixtures_cover_every_kind() -> None:
    assert len(CASES) >= 55
    assert {case["kind"] for case in CASES.values()} == set(KINDS)


@pytest.mark.parametrize("case", cases("encode"))
def test_encode(case: dict[str, Any]) -> None:
    sent = zai.encode_request(msgspec.convert(case["request"], ImageRequest))
    assert sent.path == case["expected"]["path"]
    assert (sent.method, sent.content_type) == ("POST", "application/json")
    assert json.loads(sent.body) == case["expected"]["body"]
    assert list(sent.dropped) == case["expected"]["dropped"]


@pytest.mark.parametrize("case", cases("encode_error"))
def test_encode_error(case: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        zai.encode_request(msgspec.convert(case["request"], ImageRequest))
    assert_error(info.value, case["error"])


@pytest.mark.parametrize("case", cases("decode"))
def test_decode(case: dict[str, Any]) -> None:
    result = zai.decode_response(upstream_response(case["response"]))
    assert plain(msgspec.to_builtins(result)) == case["expected"]


@pytest.mark.parametrize("case", cases("decode_error"))
def test_decode_error(case: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        zai.decode_response(upstream_response(case["response"]))
    assert_error(info.value, case["error"])


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

async def call(server: Any, sent: UpstreamRequest, key: str = API_KEY) -> UpstreamResponse:
    headers = {**bearer(key), "Content-Type": sent.content_type}
    async with ClientSession() as session:
        async with session.post(server.make_url(sent.path), data=sent.body,
                                headers=headers) as answer:
            return UpstreamResponse(status=answer.status, body=await answer.read(),
                                    headers={k.lower(): v for k, v in answer.headers.items()})


def request(**fields: Any) -> ImageRequest:
    fields.setdefault("model", "cogview-4-250304")
    return ImageRequest(operation="generate", prompt="a cat on a windowsill", **fields)


async def test_mock_url_answer_downloads(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = zai.encode_request(request(quality="high", user="user-123456", size="1536x1024"))
    result = zai.decode_response(await call(server, sent))
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
    assert zai.decode_response(await call(server, sent)).images


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
        zai.decode_response(await call(server, bad))
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
    answer = await call(server, zai.encode_request(request()))
    with pytest.raises(GatewayError) as info:
        zai.decode_response(answer)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.headers == ({"retry-after": "5"} if mode == "rate_limit" else {})


async def test_mock_unknown_model_and_wrong_key(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    with pytest.raises(GatewayError) as info:
        zai.decode_response(await call(server, zai.encode_request(request(model="cogview-9"))))
    assert info.value.code == "upstream_unavailable"
    with pytest.raises(GatewayError) as info:
        zai.decode_response(await call(server, zai.encode_request(request()), key="wrong"))
    assert info.value.code == "upstream_auth_failed"
