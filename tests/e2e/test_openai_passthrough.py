"""The official SDK through the gateway to a mock OpenAI: bytes forwarded, answers relayed."""
from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import openai
import pytest
from structlog.testing import capture_logs

from tests.conftest import make_config, openai_models
from tests.schemas import checked_sdk
from tests.upstreams.openai import PNG, png_bytes


@pytest.fixture
async def setup(openai_upstream: Any, gateway: Any, tmp_path: Any) -> Any:
    recorder, base_url = openai_upstream
    providers, models = openai_models(base_url)
    client = await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))
    sdk = checked_sdk(str(client.make_url("/v1")), "unused")
    yield recorder, client, sdk
    await sdk.close()


async def test_generation_is_forwarded_as_sent(setup: Any) -> None:
    recorder, client, _ = setup
    raw = b'{"model": "gpt-image-1",  "prompt": "otter", "n": 2, "quality": "high", "x": [1]}'
    resp = await client.post("/v1/images/generations", data=raw,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 200
    body = await resp.json()
    assert len(body["data"]) == 2 and body["usage"]["total_tokens"] == 4210
    assert recorder.last.body_size == len(raw)  # the same bytes, unknown fields and spacing kept
    assert recorder.last.json["x"] == [1]
    assert recorder.last.headers["Authorization"] == "Bearer sk-upstream-secret"


async def test_route_model_is_rewritten_and_alias_resolved(setup: Any) -> None:
    recorder, _, sdk = setup
    result = await sdk.images.generate(model="house", prompt="otter", size="1024x1024",
                                       output_format="png")
    assert base64.b64decode(result.data[0].b64_json) == PNG
    assert recorder.last.json == {"model": "gpt-image-1", "prompt": "otter", "size": "1024x1024",
                                  "output_format": "png"}


async def test_sdk_edit_single_and_multi_with_mask(setup: Any) -> None:
    recorder, _, sdk = setup
    a, b, mask = png_bytes((1, 2, 3)), png_bytes((4, 5, 6)), png_bytes((0, 0, 0))
    await sdk.images.edit(model="house-image", prompt="p", image=("a.png", a, "image/png"))
    assert [(p.name, p.filename) for p in recorder.last.parts if p.filename] == [("image", "a.png")]
    await sdk.images.edit(model="house-image", prompt="p", n=2,
                          image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
                          mask=("m.png", mask, "image/png"))
    parts = recorder.last.parts
    files = [(p.name, p.filename, p.content_type, p.sha256) for p in parts if p.filename]
    assert files == [("image[]", "a.png", "image/png", hashlib.sha256(a).hexdigest()),
                     ("image[]", "b.png", "image/png", hashlib.sha256(b).hexdigest()),
                     ("mask", "m.png", "image/png", hashlib.sha256(mask).hexdigest())]
    fields = {p.name: p.text for p in parts if not p.filename}
    assert fields["model"] == "gpt-image-1" and fields["n"] == "2" and fields["prompt"] == "p"


async def test_multipart_forward_keeps_an_exact_content_length(setup: Any) -> None:
    recorder, client, _ = setup
    body, ctype = multipart([("prompt", None, b"p"), ("model", None, b"house"),
                             ("image", "a.png", PNG)])
    resp = await client.post("/v1/images/edits", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200
    sent = recorder.last.headers
    assert int(sent["Content-Length"]) == len(body) - len(b"house") + len(b"gpt-image-1")
    assert "Transfer-Encoding" not in sent


async def test_model_after_the_file_is_spooled_and_still_rewritten(setup: Any) -> None:
    recorder, client, _ = setup
    body, ctype = multipart([("image", "a.png", PNG), ("prompt", None, b"p"),
                             ("model", None, b"house")])
    resp = await client.post("/v1/images/edits", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()
    parts = {p.name: p for p in recorder.last.parts}
    assert parts["model"].text == "gpt-image-1"
    assert parts["image"].sha256 == hashlib.sha256(PNG).hexdigest()


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "----imagegate-test-boundary"
    out = io.BytesIO()
    for name, filename, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename:
            out.write(b"Content-Type: image/png\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


async def test_json_edit_with_data_urls_is_forwarded(setup: Any) -> None:
    recorder, _, sdk = setup
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    await sdk.post("/images/edits", cast_to=object, body={
        "model": "gpt-image-1", "prompt": "p", "images": [{"image_url": url}],
        "mask": {"image_url": url}})
    assert recorder.last.json["images"][0]["image_url"] == url
    await sdk.post("/images/edits", cast_to=object, body={  # OpenAI resolves its own file ids
        "model": "gpt-image-1", "prompt": "p", "images": [{"file_id": "file-abc"}]})
    assert recorder.last.json["images"] == [{"file_id": "file-abc"}]


async def test_stream_is_relayed_event_by_event(setup: Any) -> None:
    _, client, sdk = setup
    stream = await sdk.images.generate(model="gpt-image-1", prompt="p", n=3, stream=True)
    types = [event.type async for event in stream]
    assert types == ["image_generation.partial_image", "image_generation.completed"]
    assert client.registry.get_sample_value(
        "imagegate_images_total", {"model": "gpt-image-1", "provider": "openai"}) == 1  # sent


@pytest.mark.parametrize(("mode", "exc", "status", "code"), [
    ("auth", openai.InternalServerError, 502, "upstream_auth_failed"),
    ("policy", openai.BadRequestError, 400, "moderation_blocked"),
    ("rate_limit", openai.RateLimitError, 429, "upstream_rate_limited"),
    ("quota", openai.APIStatusError, 402, "insufficient_quota"),
    ("server_error", openai.InternalServerError, 502, "upstream_unavailable"),
])
async def test_upstream_errors(setup: Any, mode: str, exc: type, status: int, code: str) -> None:
    recorder, _, sdk = setup
    recorder.mode = mode
    with capture_logs() as logs, pytest.raises(exc) as info:
        await sdk.images.generate(model="gpt-image-1", prompt="p")
    if mode == "auth":  # the operator learns OpenAI's code, never its text (it echoes the key)
        refused = [e for e in logs if e["event"] == "upstream_refused_credentials"]
        assert refused[0]["code"] == "invalid_api_key" and "sk-" not in repr(logs)
    assert info.value.status_code == status
    assert info.value.body["code"] == code
    if mode == "policy":  # OpenAI's own error keeps its type
        assert info.value.body["type"] == "image_generation_user_error"
    assert "sk-ups" not in json.dumps(info.value.body)  # the upstream key never comes back


async def test_gpt_image_url_answers_are_hosted_and_tokens_counted(setup: Any) -> None:
    recorder, client, sdk = setup
    result = await sdk.images.generate(model="gpt-image-1", prompt="p", response_format="url")
    assert "response_format" not in recorder.last.json  # GPT image models refuse the field
    resp = await client.get("/" + result.data[0].url.split("/", 3)[3])
    assert resp.status == 200 and await resp.read() == PNG
    await sdk.images.generate(model="gpt-image-1", prompt="p", response_format="b64_json")
    assert "response_format" not in recorder.last.json
    value = client.registry.get_sample_value(
        "imagegate_tokens_total", {"model": "gpt-image-1", "provider": "openai", "kind": "output"})
    assert value == 2 * 4160



@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's own warning
async def test_variations_are_forwarded_to_openai_routes(setup: Any) -> None:
    recorder, _, sdk = setup
    result = await sdk.images.create_variation(model="house-image", n=2,
                                               image=("a.png", PNG, "image/png"))
    assert len(result.data) == 2 and recorder.last.path == "/images/variations"
    fields = {p.name: p.text for p in recorder.last.parts if not p.filename}
    assert fields["model"] == "gpt-image-1" and fields["n"] == "2"


async def test_request_id_is_echoed_or_made(setup: Any) -> None:
    _, client, _ = setup
    resp = await client.get("/healthz", headers={"x-request-id": "client-id-1"})
    assert resp.headers["x-request-id"] == "client-id-1"
    resp = await client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert resp.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("first", [True, False])
async def test_multipart_gpt_image_edits_hold_back_response_format(setup: Any,
                                                                   first: bool) -> None:
    recorder, client, _ = setup
    fields = [("response_format", None, b"url"), ("model", None, b"house"),
              ("prompt", None, b"p")]
    if not first:
        fields = fields[1:] + fields[:1]
    body, ctype = multipart([*fields, ("image", "a.png", PNG)])
    resp = await client.post("/v1/images/edits", data=body, headers={"Content-Type": ctype})
    assert resp.status == 200, await resp.text()
    names = [p.name for p in recorder.last.parts]
    assert "response_format" not in names and names.count("image") == 1
    part = b'--' + ctype.split("=")[1].encode() + (
        b'\r\nContent-Disposition: form-data; name="response_format"\r\n\r\nurl\r\n')
    removed = len(part) - 2 if first else len(part)  # the CRLF before a delimiter belongs to it
    expected = len(body) - removed - len(b"house") + len(b"gpt-image-1")
    assert int(recorder.last.headers["Content-Length"]) == expected
    url = (await resp.json())["data"][0]["url"]
    got = await client.get("/" + url.split("/", 3)[3])
    assert await got.read() == PNG
