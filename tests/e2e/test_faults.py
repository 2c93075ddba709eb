"""Faults from either side: upstreams that compress or break mid-answer, malformed uploads."""
from __future__ import annotations

import base64
import io
from typing import Any

import openai
from aiohttp import web
from PIL import Image

from tests.conftest import make_config
from tests.schemas import checked_sdk
from tests.upstreams import openai as openai_mock


async def upstream(aiohttp_server: Any, handler: Any) -> str:
    app = web.Application()
    app.router.add_post("/images/generations", handler)
    app.router.add_post("/images/edits", handler)
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


def two_routes(base: str) -> dict[str, Any]:
    return {"providers": {"flaky": {"type": "openai", "base_url": base, "api_key": "k"}},
            "models": {"gpt-image-1": {"routes": [{"provider": "flaky"},
                                                  {"provider": "local", "priority": 1}]}}}


async def test_answers_are_asked_uncompressed(aiohttp_server: Any, gateway: Any) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding", ""))
        resp = web.json_response({"created": 1, "data": [{"b64_json": openai_mock.PNG_B64}]})
        if "gzip" in seen[-1]:
            resp.enable_compression()
        return resp

    client = await gateway(make_config(**two_routes(await upstream(aiohttp_server, handler))))
    resp = await client.post("/v1/images/generations", json={"model": "gpt-image-1",
                                                             "prompt": "p"})
    assert resp.status == 200 and (await resp.json())["data"][0]["b64_json"]
    assert seen == ["identity"]


async def test_a_stream_that_breaks_midway_ends_with_an_error_event(aiohttp_server: Any,
                                                                    gateway: Any) -> None:
    calls = [0]
    handler = openai_mock.breaking_stream(calls, pause_s=0.05)
    client = await gateway(make_config(**two_routes(await upstream(aiohttp_server, handler))))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    stream = await sdk.images.generate(model="gpt-image-1", prompt="p", stream=True)
    events = []
    try:
        async for event in stream:
            events.append(event.type)
    except openai.APIError as exc:
        events.append(f"error:{exc.code}")
    await sdk.close()
    assert events == ["image_generation.partial_image", "error:upstream_unavailable"]
    assert calls[0] == 1  # never retried once the answer had begun
    value = client.registry.get_sample_value("imagegate_upstream_requests_total", {
        "provider": "flaky", "model": "gpt-image-1", "outcome": "broken"})
    assert value == 1
    assert client.registry.get_sample_value(
        "imagegate_images_total", {"model": "gpt-image-1", "provider": "flaky"}) is None


async def test_malformed_streamed_uploads_do_not_rest_the_route(gateway: Any,
                                                                openai_upstream: Any) -> None:
    _, base = openai_upstream
    client = await gateway(make_config(
        providers={"openai": {"type": "openai", "base_url": base,
                              "api_key": openai_mock.API_KEY}},
        models={"gpt-image-1": {"routes": [{"provider": "openai"}]}}))
    ctype = "multipart/form-data; boundary=XX"
    head = (b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="prompt"\r\n\r\np\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b'Content-Type: image/png\r\n\r\n' + openai_mock.PNG)
    for _ in range(4):  # truncated: no closing boundary
        resp = await client.post("/v1/images/edits", data=head,
                                 headers={"Content-Type": ctype})
        assert resp.status == 400, await resp.text()
    resp = await client.post("/v1/images/generations", json={"model": "gpt-image-1",
                                                             "prompt": "p"})
    assert resp.status == 200


async def test_names_resolving_to_private_addresses_are_refused(gateway: Any) -> None:
    client = await gateway(make_config({"fetch": {"allow_private_hosts": []}}))
    resp = await client.post("/v1/images/edits", json={
        "model": "local", "prompt": "p", "images": [{"image_url": "http://localhost:9/a.png"}]})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "images[0]"


async def test_output_compression_zero_is_honoured(gateway: Any, aiohttp_server: Any) -> None:
    from tests.upstreams import ark as ark_mock

    base = str((await aiohttp_server(ark_mock.make_app(ark_mock.Recorder())))
               .make_url("")).rstrip("/")
    client = await gateway(make_config(
        providers={"ark": {"type": "ark", "base_url": base, "api_key": ark_mock.API_KEY}},
        models={"s": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0"}]}}))
    sizes = []
    for quality in (0, 100):
        resp = await client.post("/v1/images/generations", json={
            "model": "s", "prompt": "p", "output_format": "webp", "output_compression": quality})
        data = base64.b64decode((await resp.json())["data"][0]["b64_json"])
        assert Image.open(io.BytesIO(data)).format == "WEBP"
        sizes.append(len(data))
    assert sizes[0] < sizes[1]
