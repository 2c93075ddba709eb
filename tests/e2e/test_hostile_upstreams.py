"""Providers that misbehave on purpose, for every provider type: what the client gets."""
from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import make_config
from tests.upstreams import ark, gemini, openai, openrouter, zai
from tests.upstreams.hostile import BOMB, Hostile

# type -> (mock module, upstream model, its Recorder)
TYPES: dict[str, tuple[Any, str]] = {
    "openai": (openai, "gpt-image-1"),
    "ark": (ark, "doubao-seedream-4-0-250828"),
    "openrouter": (openrouter, "google/gemini-3-pro-image"),
    "gemini": (gemini, "gemini-3-pro-image"),
    "zai": (zai, "cogview-4-250304"),
}


@dataclass
class Env:
    client: Any
    hostile: Hostile
    recorder: Any
    kind: str

    async def generate(self, **extra: Any) -> Any:
        return await self.client.post("/v1/images/generations",
                                      json={"model": "m", "prompt": "a cat", **extra})

    def upstream(self, outcome: str) -> float:
        value = self.client.registry.get_sample_value("imagegate_upstream_requests_total", {
            "provider": self.kind, "model": TYPES[self.kind][1], "outcome": outcome})
        return value or 0.0


@pytest.fixture
async def env(request: Any, aiohttp_server: Any, gateway: Any,
              tmp_path: Any) -> AsyncIterator[Env]:
    kind, mode = request.param
    mock, model = TYPES[kind]
    recorder = mock.Recorder()
    real = await aiohttp_server(mock.make_app(recorder))
    hostile = await Hostile(str(real.make_url("")).rstrip("/"), mode).start()
    providers = {kind: {"type": kind, "base_url": hostile.url, "api_key": mock.API_KEY}}
    models = {"m": {"routes": [{"provider": kind, "model": model}]}}
    client = await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))
    yield Env(client, hostile, recorder, kind)
    await hostile.close()


def cases(mode: str, kinds: tuple[str, ...] = tuple(TYPES)) -> Any:
    return pytest.mark.parametrize("env", [(k, mode) for k in kinds], indirect=True,
                                   ids=list(kinds))


def printable(headers: Any) -> bool:
    return all(all(0x20 <= ord(c) < 0x7F for c in v) for v in headers.values())


@cases("headers")
async def test_control_characters_in_provider_headers_never_reach_the_client(env: Env) -> None:
    resp = await env.generate()
    assert resp.status == 200 and (await resp.json())["data"]
    assert printable(resp.headers) and "retry-after" not in resp.headers
    assert "OpenAI-Processing-Ms" not in resp.headers  # 12\x7f3: not relayed


@cases("headers")
async def test_a_rate_limit_with_a_garbled_retry_after_is_still_a_clean_429(env: Env) -> None:
    env.recorder.mode = "rate_limit"
    resp = await env.generate()
    assert resp.status == 429, await resp.text()
    assert (await resp.json())["error"]["type"] == "rate_limit_error"
    assert printable(resp.headers)
    assert resp.headers.get("retry-after", "1").isdigit()


@cases("redirect")
async def test_a_provider_that_redirects_is_not_followed(env: Env) -> None:
    resp = await env.generate()
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_unavailable" and "redirect" in error["message"]
    assert not env.recorder.requests  # the Location (the real mock) was never called
    assert env.upstream("redirected") == 1


@cases("cut")
async def test_an_answer_cut_mid_way_is_a_502_and_counts_against_the_route(env: Env) -> None:
    resp = await env.generate()
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    assert env.upstream("ok") == 0 and env.upstream("bad_answer") == 1  # a route failure


@cases("sse_cut", ("openai",))
async def test_an_event_stream_cut_mid_event_ends_with_an_error_event(env: Env) -> None:
    resp = await env.generate(stream=True)
    assert resp.status == 200
    text = await resp.text()
    assert text.rstrip().endswith('"code":"upstream_unavailable"}}')
    assert "event: error" in text.split("\n\n")[-2]  # the half event is followed by the error
    assert env.upstream("broken") == 1


@cases("huge")
async def test_a_9600px_image_is_never_decoded(env: Env) -> None:
    bomb = base64.b64encode(BOMB).decode()
    resp = await env.generate(output_format="webp")  # a format no mock makes: a transcode
    body = await resp.json()
    if resp.status == 200:  # relayed or passed on as it came, never opened
        assert env.kind in ("openai", "gemini") and body["data"][0]["b64_json"] == bomb
    else:
        assert resp.status == 502 and body["error"]["code"] == "upstream_unavailable", body
        assert "could not be read" in body["error"]["message"]
    streamed = await env.generate(stream=True)  # the event's size is read from the header only
    assert streamed.status == 200
    events = [json.loads(e.split("data: ", 1)[1]) for e in (await streamed.text()).split("\n\n")
              if e.startswith("event: image_generation.completed")]
    if env.kind != "openai":  # OpenAI's own events are relayed as they came
        assert all(e["size"] == "auto" for e in events)


@pytest.mark.parametrize("kind", ["openai", "ark"])
async def test_a_provider_echoing_the_gateways_key_never_passes_it_on(
        kind: str, aiohttp_server: Any, gateway: Any, tmp_path: Any) -> None:
    secret = "sk-gateway-own-key-0123456789"
    message = f"Invalid value for 'size' (request by key {secret})."

    async def refuse(request: web.Request) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error",
                          "param": "size", "code": "invalid_value"}}
        if kind == "ark":
            body = {"error": {"code": "InvalidParameter", "message": message,
                              "param": "size", "type": "BadRequest"}}
        return web.json_response(body, status=400)

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    server = await aiohttp_server(app)
    providers = {kind: {"type": kind, "base_url": str(server.make_url("")).rstrip("/"),
                        "api_key": secret}}
    models = {"m": {"routes": [{"provider": kind, "model": TYPES[kind][1]}]}}
    client = await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))
    resp = await client.post("/v1/images/generations", json={"model": "m", "prompt": "a cat"})
    assert resp.status == 400
    text = await resp.text()
    assert secret not in text and "[redacted]" in text
