"""Bad input gets OpenAI-shaped errors with the right status, and the SDK's matching exception."""
from __future__ import annotations

from typing import Any

import openai
import pytest
from structlog.testing import capture_logs

from tests.conftest import GATEWAY_KEY, make_config, openai_models
from tests.e2e.test_openai_passthrough import multipart
from tests.schemas import checked_sdk
from tests.upstreams.openai import PNG

AUTH = {"auth": {"keys": [{"id": "team-a", "key": GATEWAY_KEY, "models": ["gpt-image-1"]},
                          {"id": "all", "key": "ig-all"}]}}


@pytest.fixture
async def client(openai_upstream: Any, gateway: Any, tmp_path: Any) -> Any:
    recorder, base_url = openai_upstream
    providers, models = openai_models(base_url)
    config = make_config({**AUTH, "server": {"max_request_bytes": 200_000,
                                             "max_images_per_request": 4}},
                         tmp_path=tmp_path, providers=providers, models=models)
    c = await gateway(config)
    c.recorder = recorder
    return c


def envelope_ok(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


JSON_CASES = [
    (b"{not json", 400, "invalid_value", None),
    (b'{"model": "gpt-image-1"}', 400, "invalid_value", "prompt"),
    (b'{"model": "gpt-image-1", "prompt": 5}', 400, "invalid_value", "prompt"),
    (b'{"model": "gpt-image-1", "prompt": "p", "n": 0}', 400, "invalid_value", "n"),
    (b'{"model": "gpt-image-1", "prompt": "p", "n": 11}', 400, "invalid_value", "n"),
    (b'{"model": "gpt-image-1", "prompt": "p", "size": "huge"}', 400, "invalid_value", "size"),
    (b'{"model": "gpt-image-1", "prompt": "p", "size": "9000x10"}', 400, "invalid_value", "size"),
    (b'{"model": "gpt-image-1", "prompt": "p", "output_format": 5}', 400, "invalid_value",
     "output_format"),
    (b'{"model": "gpt-image-1", "prompt": "p", "quality": ""}', 400, "invalid_value",
     "quality"),
    (b'{"model": "nope", "prompt": "p"}', 404, "model_not_found", "model"),
    (b'{"model": "house-image", "prompt": "p"}', 403, "model_not_allowed", "model"),
    (b"[1, 2]", 400, "invalid_value", None),
    (b'{"prompt": "\xff\xfe"}', 400, "invalid_value", None),
    (b'{"model": "gpt-image-1", "prompt": "' + b"x" * 32001 + b'"}', 400, "invalid_value",
     "prompt"),
]


@pytest.mark.parametrize(("raw", "status", "code", "param"), JSON_CASES)
async def test_bad_json_generation(client: Any, raw: bytes, status: int, code: str,
                                   param: str | None) -> None:
    resp = await client.post("/v1/images/generations", data=raw, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}"})
    error = envelope_ok(await resp.json())
    assert (resp.status, error["code"], error["param"]) == (status, code, param)
    assert resp.headers["x-request-id"]
    assert not client.recorder.requests  # nothing bad reaches the provider


@pytest.mark.parametrize("field", [{"quality": "xhigh"}, {"quality": "max"},
                                   {"output_format": "avif"}, {"background": "blurred"},
                                   {"moderation": "strict"}])
async def test_enum_values_the_gateway_does_not_know_reach_openai(client: Any,
                                                                  field: dict) -> None:
    """OpenAI adds values (gpt-image-2's quality xhigh/max): OpenAI routes forward them for the
    upstream to judge instead of refusing them before anything is sent."""
    resp = await client.post("/v1/images/generations", headers=auth(),
                             json={"model": "gpt-image-1", "prompt": "p", **field})
    assert resp.status == 200
    sent = client.recorder.last.json
    assert {k: sent[k] for k in field} == field


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "invalid_api_key"),
    ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
    ({"Authorization": "Basic abc"}, 401, "invalid_api_key"),
])
async def test_auth_failures(client: Any, headers: dict, status: int, code: str) -> None:
    resp = await client.post("/v1/images/generations", json={"prompt": "p"}, headers=headers)
    assert resp.status == status and envelope_ok(await resp.json())["code"] == code


async def test_sdk_exception_classes(client: Any) -> None:
    base = str(client.make_url("/v1"))
    good = checked_sdk(base, GATEWAY_KEY)
    bad = checked_sdk(base, "nope")
    with pytest.raises(openai.AuthenticationError):
        await bad.images.generate(model="gpt-image-1", prompt="p")
    with pytest.raises(openai.PermissionDeniedError):
        await good.images.generate(model="house-image", prompt="p")
    with pytest.raises(openai.NotFoundError):
        await good.images.generate(model="missing", prompt="p")
    with pytest.raises(openai.BadRequestError) as info:
        await good.images.generate(model="gpt-image-1", prompt="p", n=12)
    assert info.value.param == "n"
    listed = await good.models.list()
    assert [m.id for m in listed.data] == ["gpt-image-1"]
    assert (await good.models.retrieve("gpt-image-1")).id == "gpt-image-1"
    with pytest.raises(openai.NotFoundError):
        await good.models.retrieve("house-image")  # exists, but not for this key
    await good.close()
    await bad.close()


def auth() -> dict[str, str]:
    return {"Authorization": "Bearer ig-all"}


@pytest.mark.parametrize(("parts", "param"), [
    ([("prompt", None, b"p"), ("model", None, b"gpt-image-1")], "image"),
    ([("model", None, b"gpt-image-1"), ("prompt", None, b"p"), ("image", "a.png", b"")],
     "image"),
    ([("model", None, b"gpt-image-1"), ("prompt", None, b"p"),
      ("image", "a.png", b"not an image at all")], "image"),
    ([("model", None, b"gpt-image-1"), ("prompt", None, b"p"), ("image", "a.png", PNG),
      ("mask", "m.png", b"GIF89a..")], "mask"),
    ([("model", None, b"gpt-image-1"), ("image", "a.png", PNG)], "prompt"),
    ([("model", None, b"gpt-image-1"), ("prompt", None, b"p"), ("n", None, b"x"),
      ("image", "a.png", PNG)], "n"),
    ([("model", None, b"gpt-image-1"), ("prompt", None, b"p")]
     + [("image[]", f"{i}.png", PNG) for i in range(17)], "image"),
])
async def test_bad_multipart_edits(client: Any, parts: list, param: str) -> None:
    body, ctype = multipart(parts)
    resp = await client.post("/v1/images/edits", data=body,
                             headers={"Content-Type": ctype, **auth()})
    error = envelope_ok(await resp.json())
    assert resp.status == 400 and error["param"] == param, error


async def test_wrong_content_type_and_unknown_paths(client: Any) -> None:
    resp = await client.post("/v1/images/edits", data=b"x",
                             headers={"Content-Type": "text/plain", **auth()})
    assert resp.status == 400 and envelope_ok(await resp.json())["code"] == "invalid_value"
    resp = await client.get("/v1/nothing", headers=auth())
    assert resp.status == 404 and envelope_ok(await resp.json())["code"] == "not_found"
    resp = await client.get("/v1/images/generations", headers=auth())
    assert resp.status == 405 and envelope_ok(await resp.json())["code"] == "method_not_allowed"


async def test_oversize_bodies_are_413(client: Any) -> None:
    big = b'{"prompt": "' + b"x" * 300_000 + b'"}'
    resp = await client.post("/v1/images/generations", data=big,
                             headers={"Content-Type": "application/json", **auth()})
    assert resp.status == 413 and envelope_ok(await resp.json())["code"] == "request_too_large"
    body, ctype = multipart([("model", None, b"gpt-image-1"), ("prompt", None, b"p"),
                             ("image", "a.png", PNG + b"\0" * 300_000)])
    resp = await client.post("/v1/images/edits", data=body,
                             headers={"Content-Type": ctype, **auth()})
    assert resp.status == 413


async def test_logs_never_hold_keys_or_images(client: Any) -> None:
    body, ctype = multipart([("model", None, b"gpt-image-1"), ("prompt", None, b"p"),
                             ("image", "a.png", PNG)])
    with capture_logs() as logs:
        resp = await client.post("/v1/images/edits", data=body,
                                 headers={"Content-Type": ctype, **auth()})
        assert resp.status == 200
    text = repr(logs)
    assert "ig-all" not in text and "sk-upstream" not in text and "base64" not in text
    access = [e for e in logs if e["event"] == "request"]
    assert access and access[0]["status"] == 200 and access[0]["key"] == "all"
    assert [e["provider"] for e in logs if e["event"] == "upstream"] == ["openai"]


async def test_prompts_are_logged_only_when_configured(gateway: Any, tmp_path: Any) -> None:
    for log_prompts in (False, True):
        client = await gateway(make_config({"server": {"log_prompts": log_prompts}},
                                           tmp_path=tmp_path))
        with capture_logs() as logs:
            await client.post("/v1/images/generations", json={
                "model": "local", "prompt": "secret plans", "size": "8x8"})
        assert ("secret plans" in repr(logs)) is log_prompts


async def test_more_malformed_requests(client: Any) -> None:
    resp = await client.post("/v1/images/generations", data=b'{"prompt": "p"}',
                             headers={"Content-Type": "application/x-www-form-urlencoded",
                                      **auth()})
    assert resp.status == 400 and envelope_ok(await resp.json())["code"] == "invalid_value"
    for url, param in (("http://[zz/", "images[0]"), ("http://example.com:99999/", "images[0]")):
        resp = await client.post("/v1/images/edits", headers=auth(), json={
            "model": "local", "prompt": "p", "images": [{"image_url": url}]})
        assert resp.status == 400 and envelope_ok(await resp.json())["param"] == param
    many = [{"image_url": "data:image/png;base64,AAAA"}] * 5
    resp = await client.post("/v1/images/edits", headers=auth(), json={
        "model": "gpt-image-1", "prompt": "p", "images": many})
    assert resp.status == 400 and envelope_ok(await resp.json())["param"] == "images"
    body, ctype = multipart([("model", None, b"house"), ("model", None, b"house"),
                             ("prompt", None, b"p"), ("image", "a.png", PNG)])
    resp = await client.post("/v1/images/edits", data=body,
                             headers={"Content-Type": ctype, **auth()})
    assert resp.status == 400 and envelope_ok(await resp.json())["param"] == "model"
    assert not client.recorder.requests


async def test_unknown_enum_values_in_a_multipart_edit_reach_openai(client: Any) -> None:
    body, ctype = multipart([("model", None, b"gpt-image-1"), ("prompt", None, b"p"),
                             ("quality", None, b"xhigh"), ("image", "a.png", PNG)])
    resp = await client.post("/v1/images/edits", data=body,
                             headers={"Content-Type": ctype, **auth()})
    assert resp.status == 200
    fields = {p.name: p.text for p in client.recorder.last.parts if not p.filename}
    assert fields["quality"] == "xhigh"
