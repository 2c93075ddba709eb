"""Ark adapter: fixture coverage and capabilities, then round trips through the mock upstream."""
from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from aiohttp import ClientSession
from imagegate.adapters import ark
from imagegate.adapters.base import ImageRequest, UpstreamRequest, bearer
from imagegate.config.errors import GatewayError
from PIL import Image

from tests.adapters.golden import KINDS, call, load_cases, real_image
from tests.upstreams.ark import API_KEY, Recorder, make_app

CASES = load_cases("ark")
AUTH = bearer(API_KEY)


def test_fixtures_cover_every_kind() -> None:
    assert len(CASES) >= 60
    assert {case["kind"] for case in CASES.values()} == set(KINDS)


def test_adapter_declares_one_image_per_call() -> None:
    assert ark.ADAPTER.type == "ark"
    assert ark.CAPABILITIES.images_per_call == 1 and ark.CAPABILITIES.max_input_images == 14
    assert ark.ADAPTER.auth_headers("k") == {"Authorization": "Bearer k"}


# --- against the mock upstream --------------------------------------------------------------

def request(**fields: Any) -> ImageRequest:
    fields.setdefault("operation", "generate")
    fields.setdefault("model", "doubao-seedream-4-0-250828")
    return ImageRequest(prompt="a fox", **fields)


async def test_mock_b64_answer_is_a_real_jpeg(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    result = ark.decode_response(await call(server, ark.encode_request(request()), AUTH))
    image = Image.open(io.BytesIO(base64.b64decode(result.images[0].b64_json or "")))
    assert (image.format, result.images[0].mime) == ("JPEG", "image/jpeg")
    sent = recorder.requests[0]
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.json["watermark"] is False and "n" not in sent.json
    assert result.usage is not None and result.usage.generated_images == 1


async def test_mock_url_answer_downloads(aiohttp_server: Any) -> None:
    recorder = Recorder(mode="url")
    server = await aiohttp_server(make_app(recorder))
    result = ark.decode_response(await call(server, ark.encode_request(request()), AUTH))
    url = result.images[0].url or ""
    assert url.startswith(str(server.make_url("/files/"))) and "&X-Tos-Expires" in url
    async with ClientSession() as session, session.get(url) as answer:
        assert answer.status == 200
        assert Image.open(io.BytesIO(await answer.read())).format == "JPEG"


async def test_mock_accepts_multi_image_edit(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    images = [real_image((255, 0, 0)), real_image((0, 0, 255))]
    result = ark.decode_response(await call(server, ark.encode_request(
        request(operation="edit", images=images)), AUTH))
    assert len(result.images) == 1
    sent = recorder.requests[0].json["image"]
    assert [url[:22] for url in sent] == ["data:image/png;base64,"] * 2


@pytest.mark.parametrize(("change", "param"), [
    ({"n": 1}, "n"),
    ({"watermark": None}, "watermark"),
])
async def test_mock_refuses_n_and_missing_watermark(aiohttp_server: Any, change: dict[str, Any],
                                                    param: str) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    good = ark.encode_request(request())
    body = {**json.loads(good.body), **change}
    body = {k: v for k, v in body.items() if v is not None}
    bad = UpstreamRequest(path=good.path, body=json.dumps(body).encode())
    with pytest.raises(GatewayError) as info:
        ark.decode_response(await call(server, bad, AUTH))
    assert (info.value.code, info.value.param) == ("invalid_value", param)


@pytest.mark.parametrize(("mode", "code", "failed"), [
    ("partial", None, 1),
    ("all_failed", "content_policy_violation", 0),
    ("no_image", "no_image", 0),
    ("safety", "content_policy_violation", 0),
    ("auth", "upstream_auth_failed", 0),
    ("rate_limit", "upstream_rate_limited", 0),
    ("quota", "insufficient_quota", 0),
    ("server_error", "upstream_unavailable", 0),
    ("bad_param", "invalid_value", 0),
    ("not_found", "upstream_unavailable", 0),
    ("not_json", "upstream_unavailable", 0),
])
async def test_mock_faults(aiohttp_server: Any, mode: str, code: str | None, failed: int) -> None:
    server = await aiohttp_server(make_app(Recorder(mode=mode)))
    answer = await call(server, ark.encode_request(request()), AUTH)
    if code is None:
        assert ark.decode_response(answer).failed == failed
        return
    with pytest.raises(GatewayError) as info:
        ark.decode_response(answer)
    assert info.value.code == code
    assert info.value.headers == ({"retry-after": "7"} if mode == "rate_limit" else {})


async def test_mock_wrong_key_is_upstream_auth_failed(aiohttp_server: Any) -> None:
    server = await aiohttp_server(make_app(Recorder()))
    answer = await call(server, ark.encode_request(request()), bearer("wrong"))
    with pytest.raises(GatewayError) as info:
        ark.decode_response(answer)
    assert (info.value.status, info.value.code) == (502, "upstream_auth_failed")


@pytest.mark.parametrize("model", ["doubao-seedream-4-5-251128", "doubao-seedream-5-0-260128",
                                   "doubao-seedream-5-0-pro-260628"])
@pytest.mark.parametrize("size", ["1024x1024", "1536x1024", "1024x1536", "1K", "2K", "3K", "4K",
                                  "auto", None])
async def test_mock_takes_every_openai_size_on_seedream_45_and_5(
        aiohttp_server: Any, model: str, size: str | None) -> None:
    """Sent as-is these sizes are 400 "image size must be at least 3686400 pixels"."""
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = ark.encode_request(request(model=model, size=size))
    assert ark.decode_response(await call(server, sent, AUTH)).images
    width, _, height = recorder.requests[0].json["size"].partition("x")
    if height:
        assert int(width) * int(height) >= 2560 * 1440
        asked = (1024, 1024) if size == "1024x1024" else (1536, 1024) if size == "1536x1024" \
            else (1024, 1536)
        assert abs(int(width) / int(height) - asked[0] / asked[1]) < 0.01  # ratio kept
    assert ("size" in sent.dropped) == (size not in (None, "auto", "2K")
                                        and not (size == "3K" and "5-0-2" in model)
                                        and not (size == "4K" and "4-5" in model))


def test_seedream_45_keeps_the_old_minimum_off_4_0() -> None:
    sent = ark.encode_request(request(size="1024x1024"))  # 4.0: 1280x720 minimum
    assert json.loads(sent.body)["size"] == "1024x1024" and sent.dropped == ()


async def test_mock_seedream_5_makes_the_asked_png_itself(aiohttp_server: Any) -> None:
    recorder = Recorder()
    server = await aiohttp_server(make_app(recorder))
    sent = ark.encode_request(request(model="doubao-seedream-5-0-260128", output_format="png"))
    result = ark.decode_response(await call(server, sent, AUTH))
    assert recorder.requests[0].json["output_format"] == "png"
    assert result.images[0].mime == "image/png"
    sent = ark.encode_request(request(model="doubao-seedream-4-5-251128", output_format="png"))
    assert "output_format" not in json.loads(sent.body)  # 4.5 would refuse it


@pytest.mark.parametrize(("mode", "status", "code", "lacks"), [
    ("overdue", 402, "insufficient_quota", "2100123"),
    ("quota", 402, "insufficient_quota", "free quota"),
    ("risk", 400, "content_policy_violation", API_KEY),
])
async def test_mock_billing_states_and_content_security(aiohttp_server: Any, mode: str,
                                                        status: int, code: str,
                                                        lacks: str) -> None:
    server = await aiohttp_server(make_app(Recorder(mode=mode)))
    answer = await call(server, ark.encode_request(request()), AUTH)
    with pytest.raises(GatewayError) as info:
        ark.decode_response(answer)
    assert (info.value.status, info.value.code) == (status, code)
    assert lacks not in info.value.message
