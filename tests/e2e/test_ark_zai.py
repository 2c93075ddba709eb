"""Ark (Seedream) and Z.AI behind the gateway, driven by the official SDK: answers normalised."""
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
from tests.upstreams import ark as ark_mock
from tests.upstreams import zai as zai_mock
from tests.upstreams.openai import png_bytes


@pytest.fixture
async def env(aiohttp_server: Any, gateway: Any, tmp_path: Any) -> Any:
    ark, zai = ark_mock.Recorder(), zai_mock.Recorder()
    ark_url = str((await aiohttp_server(ark_mock.make_app(ark))).make_url("")).rstrip("/")
    zai_url = str((await aiohttp_server(zai_mock.make_app(zai))).make_url("")).rstrip("/")
    providers = {
        "ark": {"type": "ark", "base_url": ark_url, "api_key": ark_mock.API_KEY},
        "zai": {"type": "zai", "base_url": zai_url, "api_key": zai_mock.API_KEY},
    }
    models = {
        "seedream": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0-250828"}]},
        "cogview-4": {"routes": [{"provider": "zai", "model": "cogview-4-250304"}]},
    }
    client = await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    yield sdk, client, ark, zai
    await sdk.close()


def image_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_n3_makes_three_calls_without_n_and_without_watermark(env: Any) -> None:
    sdk, client, ark, _ = env
    result = await sdk.images.generate(model="seedream", prompt="otter", n=3)
    assert len(result.data) == 3 and all(image_of(d.b64_json).format == "JPEG"
                                         for d in result.data)
    bodies = [r.json for r in ark.requests]
    assert len(bodies) == 3
    assert all("n" not in b and b["watermark"] is False for b in bodies)
    assert result.usage is not None and result.usage.output_tokens > 0
    text = await (await client.get("/metrics")).text()
    assert 'imagegate_images_total{model="seedream",provider="ark"} 3.0' in text


async def test_url_vs_b64_and_output_format(env: Any) -> None:
    sdk, client, ark, zai = env
    png = await sdk.images.generate(model="seedream", prompt="p", output_format="png")
    assert image_of(png.data[0].b64_json).format == "PNG"  # Ark made a JPEG: transcoded
    zai.mode = "ok"
    linked = await sdk.images.generate(model="cogview-4", prompt="p", response_format="url",
                                       output_format="webp")
    url = linked.data[0].url
    assert url.startswith(str(client.make_url("/v1/images/files/")))  # a gateway link
    resp = await client.get("/" + url.split("/", 3)[3])
    assert Image.open(io.BytesIO(await resp.read())).format == "WEBP"
    b64 = await sdk.images.generate(model="cogview-4", prompt="p")  # url answer, b64 asked
    assert image_of(b64.data[0].b64_json).format == "PNG"


async def test_edits_single_multi_and_mask_refused(env: Any) -> None:
    sdk, _, ark, _ = env
    a, b = png_bytes((1, 2, 3)), png_bytes((9, 9, 9))
    await sdk.images.edit(model="seedream", prompt="p", image=("a.png", a, "image/png"))
    assert ark.requests[-1].json["image"].startswith("data:image/png;base64,")
    await sdk.images.edit(model="seedream", prompt="p",
                          image=[("a.png", a, "image/png"), ("b.png", b, "image/png")])
    sent = ark.requests[-1].json["image"]
    assert isinstance(sent, list) and base64.b64decode(sent[1].split(",")[1]) == b
    calls = len(ark.requests)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.edit(model="seedream", prompt="p", image=("a.png", a, "image/png"),
                              mask=("m.png", a, "image/png"))
    assert info.value.param == "mask" and len(ark.requests) == calls
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.edit(model="cogview-4", prompt="p", image=("a.png", a, "image/png"))
    assert info.value.param == "image"


async def test_safety_partial_failures_and_dropped_params(env: Any) -> None:
    sdk, _, ark, zai = env
    ark.mode = "safety"
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="seedream", prompt="p")
    assert info.value.code == "content_policy_violation"
    zai.mode = "safety"
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="cogview-4", prompt="p")
    assert info.value.code == "content_policy_violation"
    ark.mode = "partial"  # one image and one failed item per call: the client still gets n
    raw = await sdk.images.with_raw_response.generate(model="seedream", prompt="p", n=2,
                                                      quality="high", style="vivid",
                                                      extra_body={"flavour": "x"})
    assert raw.headers["x-imagegate-dropped-params"] == "quality,style,flavour"
    assert "x-imagegate-failed-images" not in raw.headers
    assert len(raw.parse().data) == 2


async def test_some_calls_failing_give_the_rest_and_a_count(aiohttp_server: Any, gateway: Any,
                                                            tmp_path: Any) -> None:
    recorder, calls = ark_mock.Recorder(), [0]

    @web.middleware
    async def every_other_fails(request: web.Request, handler: Any) -> web.StreamResponse:
        calls[0] += 1
        recorder.mode = "ok" if calls[0] % 2 else "server_error"
        return await handler(request)

    app = ark_mock.make_app(recorder)
    app.middlewares.append(every_other_fails)
    url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    client = await gateway(make_config(
        tmp_path=tmp_path,
        providers={"ark": {"type": "ark", "base_url": url, "api_key": ark_mock.API_KEY}},
        models={"seedream": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0"}]}}))
    resp = await client.post("/v1/images/generations", json={"model": "seedream", "prompt": "p",
                                                             "n": 4})
    assert resp.status == 200 and resp.headers["x-imagegate-failed-images"] == "2"
    assert len((await resp.json())["data"]) == 2


@pytest.mark.parametrize(("mode", "exc", "code"), [
    ("auth", openai.InternalServerError, "upstream_auth_failed"),
    ("rate_limit", openai.RateLimitError, "upstream_rate_limited"),
    ("server_error", openai.InternalServerError, "upstream_unavailable"),
    ("all_failed", openai.BadRequestError, "content_policy_violation"),
    ("no_image", openai.InternalServerError, "no_image"),
])
async def test_ark_errors(env: Any, mode: str, exc: type, code: str) -> None:
    sdk, _, ark, _ = env
    ark.mode = mode
    with pytest.raises(exc) as info:
        await sdk.images.generate(model="seedream", prompt="p")
    assert info.value.code == code
    assert ark_mock.API_KEY not in str(info.value.body)


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3/a.png",
                                 "file:///etc/passwd", "http://[::1]:1/a.png",
                                 "https://images.example.com/a.png"])
async def test_unsafe_image_urls_are_refused(env: Any, url: str) -> None:
    sdk, _, ark, _ = env
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.post("/images/edits", cast_to=object, body={
            "model": "seedream", "prompt": "p", "images": [{"image_url": url}]})
    assert info.value.param == "images[0]" and not ark.requests


async def test_allowed_http_image_url_is_fetched(env: Any, aiohttp_server: Any) -> None:
    sdk, _, ark, _ = env
    server = await aiohttp_server(ark_mock.make_app(ark_mock.Recorder()))
    url = str(server.make_url("/files/image_0.jpeg"))
    await sdk.post("/images/edits", cast_to=object, body={
        "model": "seedream", "prompt": "p", "images": [{"image_url": url}]})
    assert ark.requests[-1].json["image"].startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize(("target", "mode"), [("ark", "overdue"), ("ark", "quota"),
                                              ("zai", "arrears")])
async def test_billing_states_fail_over_then_are_402(aiohttp_server: Any, gateway: Any,
                                                    tmp_path: Any, target: str,
                                                    mode: str) -> None:
    """A provider account's billing state is the gateway's problem: the next route answers;
    with none left the client gets 402 naming the state, never the account."""
    mock = ark_mock if target == "ark" else zai_mock
    recorder = mock.Recorder(mode=mode)
    base = str((await aiohttp_server(mock.make_app(recorder))).make_url("")).rstrip("/")
    model = "doubao-seedream-4-5-251128" if target == "ark" else "cogview-4-250304"
    route = {"provider": target, "model": model}
    client = await gateway(make_config(
        tmp_path=tmp_path,
        providers={target: {"type": target, "base_url": base, "api_key": mock.API_KEY}},
        models={"both": {"routes": [route, {"provider": "local", "priority": 1}]},
                "only": {"routes": [route]}}))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    try:
        raw = await sdk.images.with_raw_response.generate(model="both", prompt="p")
        assert raw.headers["x-imagegate-provider"] == "local" and raw.parse().data
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.images.generate(model="only", prompt="p")
        assert (info.value.status_code, info.value.code) == (402, "insufficient_quota")
        assert "2100123" not in str(info.value.body)
    finally:
        await sdk.close()
