"""OpenRouter and Gemini behind the gateway, driven by the official SDK: chat answers as images."""
from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from aiohttp import web
from PIL import Image

from tests.conftest import make_config
from tests.schemas import checked_sdk
from tests.upstreams import gemini as gemini_mock
from tests.upstreams import openrouter as or_mock
from tests.upstreams.openai import png_bytes


@pytest.fixture
async def env(aiohttp_server: Any, gateway: Any, tmp_path: Any) -> Any:
    orr, gem = or_mock.Recorder(), gemini_mock.Recorder()
    or_url = str((await aiohttp_server(or_mock.make_app(orr))).make_url("")).rstrip("/")
    gem_url = str((await aiohttp_server(gemini_mock.make_app(gem))).make_url("")).rstrip("/")
    providers = {
        "openrouter": {"type": "openrouter", "base_url": or_url, "api_key": or_mock.API_KEY,
                       "headers": {"HTTP-Referer": "https://app.example", "X-Title": "Demo"}},
        "gemini": {"type": "gemini", "base_url": gem_url, "api_key": gemini_mock.API_KEY},
    }
    models = {
        "or-image": {"routes": [{"provider": "openrouter",
                                 "model": "google/gemini-3-pro-image"}]},
        "gemini-image": {"routes": [{"provider": "gemini", "model": "gemini-3-pro-image",
                                     "image_only": True}]},
    }
    client = await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    yield sdk, orr, gem
    await sdk.close()


def pixels(b64: str) -> tuple[str, Any]:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    return im.format, im.convert("RGB").getpixel((0, 0))


async def test_generation_n2_sizes_and_headers(env: Any) -> None:
    sdk, orr, gem = env
    result = await sdk.images.generate(model="or-image", prompt="p", n=2, size="1536x1024")
    assert len(result.data) == 2 and len(orr.requests) == 2
    sent = orr.requests[-1]
    assert sent.json["image_config"] == {"aspect_ratio": "3:2", "image_size": "1K"}
    assert sent.json["modalities"] == ["image", "text"]
    assert sent.headers["X-Title"] == "Demo" and sent.headers["HTTP-Referer"]
    assert result.usage is not None and result.usage.output_tokens > 0
    result = await sdk.images.generate(model="gemini-image", prompt="p", n=2, size="1792x1024",
                                       output_format="jpeg")
    assert [pixels(d.b64_json)[0] for d in result.data] == ["JPEG", "JPEG"]
    config = gem.requests[-1].json["generationConfig"]
    assert config["responseModalities"] == ["IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "1K"}  # 1.8 MP: 1K


async def test_gemini_skips_thought_images(env: Any) -> None:
    sdk, _, gem = env
    gem.mode = "thought"
    result = await sdk.images.generate(model="gemini-image", prompt="p")
    final = Image.open(io.BytesIO(gemini_mock.FINAL_PNG)).convert("RGB").getpixel((0, 0))
    assert pixels(result.data[0].b64_json)[1] == final


async def test_edits_single_multi_and_mask_refused(env: Any) -> None:
    sdk, orr, gem = env
    a, b = png_bytes((1, 2, 3)), png_bytes((7, 8, 9))
    await sdk.images.edit(model="or-image", prompt="p", image=("a.png", a, "image/png"))
    content = orr.requests[-1].json["messages"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image_url"]
    await sdk.images.edit(model="gemini-image", prompt="p",
                          image=[("a.png", a, "image/png"), ("b.png", b, "image/png")])
    parts = gem.requests[-1].json["contents"][0]["parts"]
    assert parts[0] == {"text": "p"}
    assert [base64.b64decode(p["inlineData"]["data"]) for p in parts[1:]] == [a, b]
    for model in ("or-image", "gemini-image"):
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.images.edit(model=model, prompt="p", image=("a.png", a, "image/png"),
                                  mask=("m.png", a, "image/png"))
        assert info.value.param == "mask"


@pytest.mark.parametrize(("target", "mode", "exc", "code"), [
    ("gemini", "block_reason", openai.BadRequestError, "content_policy_violation"),
    ("gemini", "image_safety", openai.BadRequestError, "content_policy_violation"),
    ("gemini", "text_only", openai.InternalServerError, "no_image"),
    ("gemini", "no_image", openai.InternalServerError, "no_image"),
    ("openrouter", "text_only", openai.InternalServerError, "no_image"),
    ("openrouter", "moderation", openai.BadRequestError, "content_policy_violation"),
    ("openrouter", "quota", openai.APIStatusError, "insufficient_quota"),
    ("openrouter", "error_in_200", openai.InternalServerError, "upstream_unavailable"),
    ("gemini", "auth", openai.InternalServerError, "upstream_auth_failed"),
])
async def test_no_image_and_errors_are_never_a_200(env: Any, target: str, mode: str, exc: type,
                                                   code: str) -> None:
    sdk, orr, gem = env
    (gem if target == "gemini" else orr).mode = mode
    model = "gemini-image" if target == "gemini" else "or-image"
    with pytest.raises(exc) as info:
        await sdk.images.generate(model=model, prompt="p")
    assert info.value.code == code


@pytest.mark.parametrize(("target", "expected"), [("gemini", "2"), ("openrouter", "4")])
async def test_429_carries_retry_after(env: Any, target: str, expected: str) -> None:
    sdk, orr, gem = env
    (gem if target == "gemini" else orr).mode = "rate_limit"
    model = "gemini-image" if target == "gemini" else "or-image"
    raw = sdk.images.with_raw_response
    with pytest.raises(openai.RateLimitError) as info:
        await raw.generate(model=model, prompt="p")
    assert info.value.response.headers["retry-after"] == expected
    assert info.value.code == "upstream_rate_limited"


@pytest.mark.parametrize("url", ["data:image/png;base64,abc", "data:image/png;base64,aGVsbG8="])
async def test_unreadable_provider_images_are_502(aiohttp_server: Any, gateway: Any,
                                                  url: str) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"created": 1, "choices": [{"message": {
            "role": "assistant", "content": "", "images": [
                {"type": "image_url", "image_url": {"url": url}}]}}]})

    app = web.Application()
    app.router.add_post("/chat/completions", chat)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    client = await gateway(make_config(
        providers={"or": {"type": "openrouter", "base_url": base, "api_key": "k"}},
        models={"m": {"routes": [{"provider": "or", "model": "x/y"}]}}))
    for fmt in ("png", "jpeg"):
        resp = await client.post("/v1/images/generations",
                                 json={"model": "m", "prompt": "p", "output_format": fmt})
        assert resp.status == 502 and (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_an_image_only_model_no_table_knows_is_retried_once_then_remembered(
        aiohttp_server: Any, gateway: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegate.adapters import openrouter

    monkeypatch.setattr(openrouter, "LEARNED_IMAGE_ONLY", set())
    recorder = or_mock.Recorder()
    base = str((await aiohttp_server(or_mock.make_app(recorder))).make_url("")).rstrip("/")
    client = await gateway(make_config(
        tmp_path=tmp_path,
        providers={"or": {"type": "openrouter", "base_url": base, "api_key": or_mock.API_KEY}},
        models={"pixels": {"routes": [{"provider": "or", "model": "acme/pixels-only"}]}}))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    try:
        assert (await sdk.images.generate(model="pixels", prompt="p")).data
        assert [r.json["modalities"] for r in recorder.requests] == [["image", "text"], ["image"]]
        assert (await sdk.images.generate(model="pixels", prompt="p")).data
        assert [r.json["modalities"] for r in recorder.requests][2:] == [["image"]]
    finally:
        await sdk.close()


async def test_unknown_enum_values_are_named_dropped_on_adapted_routes(env: Any) -> None:
    sdk, orr, gem = env
    raw = await sdk.images.with_raw_response.generate(
        model="gemini-image", prompt="p", quality="ultra", output_format="avif",
        background="blurred")
    assert raw.headers["x-imagegate-dropped-params"] == "quality,output_format,background"
    assert pixels(raw.parse().data[0].b64_json)[0] == "PNG"  # the provider's own format
    assert "imageConfig" not in gem.requests[-1].json["generationConfig"]
    raw = await sdk.images.with_raw_response.generate(model="or-image", prompt="p",
                                                      quality="xhigh")
    assert "x-imagegate-dropped-params" not in raw.headers  # known: mapped to 4K
    assert orr.requests[-1].json["image_config"] == {"image_size": "4K"}
