"""storage.backend s3 against an S3-compatible server on loopback (tests/s3_server.py): links
presigned to the bucket or signed to the gateway, objects as written, stored idempotent
answers in the bucket, and a bucket that goes down."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import openai
import pytest
import redis
from aiohttp import web
from imagegate.config.schema import Config
from imagegate.proxy.storage import ImageStore
from structlog.testing import capture_logs

from tests.conftest import make_config, openai_models
from tests.e2e.test_health import healthy, start
from tests.e2e.test_idempotency import generate
from tests.e2e.test_routing import two_upstreams
from tests.gateway_process import gateway_process
from tests.harness import Clock
from tests.redis_server import redis_server
from tests.s3_server import ENV, MotoServer, S3Target, s3_target
from tests.schemas import checked_sdk

GENERATE = "/v1/images/generations"
LOCAL = {"model": "local", "prompt": "a kite over the dunes", "size": "48x32"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer | None]:
    """One moto server for the module (each test has its own bucket); none for an outside one."""
    import os

    if os.environ.get(ENV):
        yield None
        return
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto: MotoServer | None) -> Iterator[S3Target]:
    with s3_target(moto) as target:
        yield target


def s3_config(s3: S3Target, *, ttl_s: float = 60, presign: bool = True,
              **overrides: Any) -> Config:
    storage = {"backend": "s3", "ttl_s": ttl_s, "signing_secret": "shared-secret",
               "s3": s3.config(presign=presign)}
    return make_config({"storage": storage, **overrides.pop("top", {})}, **overrides)


async def b64_and_url(client: Any, body: dict[str, Any] = LOCAL) -> tuple[bytes, str]:
    """The image as base64 and the same image (`local` is deterministic) as a link."""
    b64 = await (await client.post(GENERATE, json=body)).json()
    resp = await client.post(GENERATE, json={**body, "response_format": "url"})
    assert resp.status == 200, await resp.text()
    return base64.b64decode(b64["data"][0]["b64_json"]), (await resp.json())["data"][0]["url"]


def name_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


async def test_url_answers_are_presigned_links_that_expire(gateway: Any, s3: S3Target) -> None:
    client = await gateway(s3_config(s3, ttl_s=3))  # >= 2 s left for the first fetch
    image, url = await b64_and_url(client)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{s3.endpoint_url}/") and query["X-Amz-Expires"] == ["3"]
    signed = dt.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=dt.UTC).timestamp()
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as got:  # straight from the bucket: the gateway is not asked
            assert got.status == 200 and got.headers["Content-Type"] == "image/png"
            assert await got.read() == image
        async with http.get(url.replace("X-Amz-Expires=3", "X-Amz-Expires=9")) as longer:
            assert longer.status == 403  # the expiry is signed
        await asyncio.sleep(max(0.0, signed + 3 - time.time()) + 0.3)
        async with http.get(url) as late:
            assert late.status == 403 and b"expired" in await late.read()
    if s3.moto is not None:
        assert s3.moto.check is not None and s3.moto.check.checked == 3


async def test_objects_carry_their_type_expiry_and_lifecycle_tags(gateway: Any,
                                                                  s3: S3Target) -> None:
    client = await gateway(s3_config(s3, ttl_s=7200))
    before = time.time()
    _, url = await b64_and_url(client, {**LOCAL, "output_format": "webp"})
    key = s3.prefix + name_of(url)
    assert s3.keys() == [key] and key.endswith(".webp")
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == "public, max-age=7200, immutable"
    assert before + 7200 - 2 <= head["Expires"].timestamp() <= time.time() + 7200 + 1
    tags = s3.client.get_object_tagging(Bucket=s3.bucket, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"imagegate-kind": "image",
                                                    "imagegate-expire-days": "1"}




async def test_presign_false_streams_the_object_through_signed_gateway_links(
        gateway: Any, s3: S3Target) -> None:
    config, clock = s3_config(s3, ttl_s=60, presign=False), Clock(time.time())
    client = await gateway(config, store=ImageStore(config.storage, clock))
    image, url = await b64_and_url(client)
    base = str(client.make_url("/v1/images/files/"))
    assert url.startswith(base) and "expires=" in url and "sig=" in url
    path = "/" + url.split("/", 3)[3]
    resp = await client.get(path)
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Length"] == str(len(image)) and await resp.read() == image
    bad = await client.get(path[:-4] + ("0000" if not path.endswith("0000") else "1111"))
    assert bad.status == 404 and (await bad.json())["error"]["code"] == "not_found"
    s3.client.delete_object(Bucket=s3.bucket, Key=s3.prefix + name_of(url))
    gone = await client.get(path)
    assert gone.status == 404
    _, url = await b64_and_url(client)
    clock.now += 61
    late = await client.get("/" + url.split("/", 3)[3])
    assert late.status == 404 and (await late.json())["error"]["type"] == "invalid_request_error"


async def test_the_openai_sdk_gets_a_link_it_can_fetch(gateway: Any, s3: S3Target) -> None:
    client = await gateway(s3_config(s3))
    async with checked_sdk(str(client.make_url("/v1")), "x") as sdk:
        result = await sdk.images.generate(model="local", prompt="a lighthouse", size="64x64",
                                           response_format="url")
    assert len(result.data) == 1 and result.data[0].b64_json is None
    async with aiohttp.ClientSession() as http, http.get(result.data[0].url) as got:
        assert got.status == 200 and (await got.read()).startswith(b"\x89PNG\r\n\x1a\n")


def redis_and_s3(s3: S3Target, url: str) -> dict[str, Any]:
    return {"state": {"backend": "redis", "redis_url": url},
            "storage": {"backend": "s3", "signing_secret": "shared", "ttl_s": 60,
                        "s3": s3.config()}}


@pytest.fixture
def start_openai(aiohttp_client: Any, openai_upstream: Any) -> Any:
    async def run(overrides: dict[str, Any]) -> Any:
        from imagegate.proxy.app import create_app
        from prometheus_client import CollectorRegistry

        providers, models = openai_models(openai_upstream[1])
        config = make_config(overrides, providers=providers, models=models)
        return await aiohttp_client(create_app(config, registry=CollectorRegistry()))

    return run


async def test_stored_answers_live_in_the_bucket_shared_through_redis(
        start_openai: Any, openai_upstream: Any, s3: S3Target, tmp_path: Any) -> None:
    recorder, _ = openai_upstream
    with redis_server(tmp_path) as url:
        one = await start_openai(redis_and_s3(s3, url))
        two = await start_openai(redis_and_s3(s3, url))
        before = time.time()
        _, first = await generate(one, response_format="url")
        headers, again = await generate(two, response_format="url")  # on another machine
        assert headers["idempotent-replayed"] == "true" and len(recorder.requests) == 1
        assert again.model_dump() == first.model_dump()
        answers = s3.keys("answers/")
        assert len(answers) == 1
        tags = s3.client.get_object_tagging(Bucket=s3.bucket, Key=answers[0])["TagSet"]
        assert {"Key": "imagegate-kind", "Value": "answer"} in tags
        # replayed no longer than its presigned link works (storage.ttl_s, not a day)
        expires = s3.client.head_object(Bucket=s3.bucket, Key=answers[0])["Expires"]
        assert expires.timestamp() <= before + 60 + 2
        shared = redis.Redis.from_url(url)
        assert [k for k in shared.keys("imagegate:idem:*") if b":answer:" in k] == []
        shared.close()


async def test_a_memory_ledger_keeps_answers_in_the_bucket(start_openai: Any,
                                                          openai_upstream: Any,
                                                          s3: S3Target) -> None:
    recorder, _ = openai_upstream
    client = await start_openai({"storage": {"backend": "s3", "s3": s3.config()}})
    _, first = await generate(client)
    headers, again = await generate(client)
    assert headers["idempotent-replayed"] == "true" and len(recorder.requests) == 1
    assert again.model_dump() == first.model_dump()
    (answer,) = s3.keys("answers/")
    s3.client.delete_object(Bucket=s3.bucket, Key=answer)  # a lifecycle rule removed it
    headers, _ = await generate(client)
    assert "idempotent-replayed" not in headers and len(recorder.requests) == 2


async def test_a_bucket_that_is_down_is_503_and_leaves_route_health_alone(
        aiohttp_server: Any, aiohttp_client: Any) -> None:
    server = MotoServer()
    first, second, providers, models = await two_upstreams(aiohttp_server)
    with s3_target(server) as s3:
        config = s3_config(s3, presign=False, providers=providers, models=models)
        client, _, registry = await start(aiohttp_client, config)
        url_body = {"model": "gpt-image-1", "prompt": "p", "response_format": "url"}
        resp = await client.post(GENERATE, json=url_body)
        link = "/" + (await resp.json())["data"][0]["url"].split("/", 3)[3]
        server.stop()
        with capture_logs() as logs:
            for _ in range(2):  # the image cannot be stored
                resp = await client.post(GENERATE, json=url_body)
                assert resp.status == 503 and int(resp.headers["retry-after"]) >= 1
                assert await resp.json() == {"error": {
                    "message": "Image storage is unavailable.", "type": "upstream_error",
                    "param": None, "code": "upstream_unavailable"}}
            fetched = await client.get(link)  # nor read
            assert fetched.status == 503 and fetched.headers["retry-after"]
            b64 = await client.post(GENERATE, json={"model": "gpt-image-1", "prompt": "p"})
            assert b64.status == 200  # what needs no storage still works
        down = [e for e in logs if e["event"] == "storage_unreachable"]
        assert len(down) == 3 and {e["backend"] for e in down} == {"s3"}
        assert {e["action"] for e in down} == {"put", "get"}
        assert not any(s3.secret_access_key in repr(e) or "127.0.0.1" in repr(e) for e in logs)
        assert len(first.requests) == 4 and second.requests == []  # never paid for twice
        assert healthy(registry, "primary", "gpt-image-1") == 1
        server.start()
        resp = await client.get(link)
        assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")
        assert (await client.post(GENERATE, json=url_body)).status == 200
    server.stop()


def post(base_url: str, body: dict[str, Any], key: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(f"{base_url}{GENERATE}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Idempotency-Key": key})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(resp.headers), resp.read()


async def test_two_gateway_processes_replay_one_answer_from_the_bucket(s3: S3Target,
                                                                       tmp_path: Any) -> None:
    with redis_server(tmp_path) as url:
        config = tmp_path / "imagegate.yaml"
        config.write_text(json.dumps({**redis_and_s3(s3, url), "models": {
            "local": {"routes": [{"provider": "local"}]}}, "providers": {
            "local": {"type": "local"}}}))
        with gateway_process(tmp_path, config, name="a") as a, \
                gateway_process(tmp_path, config, name="b") as b:
            a.wait_healthy()
            b.wait_healthy()
            body = {**LOCAL, "response_format": "url"}
            first_headers, first = await asyncio.to_thread(post, a.base_url, body, "k-1")
            headers, again = await asyncio.to_thread(post, b.base_url, body, "k-1")
            assert "idempotent-replayed" not in first_headers
            assert headers["idempotent-replayed"] == "true" and again == first
            link = json.loads(again)["data"][0]["url"]
            async with aiohttp.ClientSession() as http, http.get(link) as got:
                assert got.status == 200 and got.headers["Content-Type"] == "image/png"
            assert len(s3.keys("answers/")) == 1 and len(s3.keys()) == 2
        for log in (a.log(), b.log()):
            assert "X-Amz-Signature" not in log and s3.secret_access_key not in log


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


async def test_debug_logging_shows_no_signature_url_or_image_bytes(gateway: Any,
                                                                   s3: S3Target) -> None:
    root, records = logging.getLogger(), Records()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)  # as server.log_level: debug sets it
    try:
        client = await gateway(s3_config(s3, presign=False))
        image, url = await b64_and_url(client)
        assert (await client.get("/" + url.split("/", 3)[3])).status == 200
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    text = "\n".join(records.lines)
    for leak in ("Signature", "Authorization", "X-Amz", s3.secret_access_key, "IHDR"):
        assert leak not in text


async def test_a_bucket_that_breaks_mid_object_cuts_the_link_and_logs_no_500(
        gateway: Any, aiohttp_server: Any) -> None:
    """An S3-compatible server that takes the object, then sends a tenth of it and hangs up."""
    stored: dict[str, bytes] = {}

    async def put(request: web.Request) -> web.Response:
        stored[request.path] = await request.read()
        return web.Response(headers={"ETag": '"1"'})

    async def get(request: web.Request) -> web.StreamResponse:
        data = stored[request.path]
        resp = web.StreamResponse(headers={"Content-Type": "image/png",
                                           "Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[: len(data) // 10])
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_put("/{tail:.*}", put)
    app.router.add_get("/{tail:.*}", get)
    broken = await aiohttp_server(app)
    target = S3Target(str(broken.make_url("")).rstrip("/"), "k", "s" * 16, "bucket", "images/")
    client = await gateway(s3_config(target, presign=False))
    _, url = await b64_and_url(client)
    with capture_logs() as logs:
        with pytest.raises(aiohttp.ClientPayloadError):
            resp = await client.get("/" + url.split("/", 3)[3])
            assert resp.status == 200
            await resp.read()
    assert [e["action"] for e in logs if e["event"] == "storage_unreachable"] == ["stream"]
    assert not [e for e in logs if e["event"] == "unhandled_error"]


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_stored_answers_with_the_bucket_down_follow_on_redis_error(
        start_openai: Any, openai_upstream: Any, on_error: str) -> None:
    recorder, _ = openai_upstream
    server = MotoServer()
    with s3_target(server) as s3:
        client = await start_openai({"storage": {"backend": "s3", "s3": s3.config()},
                                     "state": {"on_redis_error": on_error}})
        await generate(client)
        server.stop()
        with capture_logs() as logs:
            if on_error == "open":  # served again, unprotected
                headers, _ = await generate(client)
                assert "idempotent-replayed" not in headers and len(recorder.requests) == 2
                headers, _ = await generate(client, "order-43")  # answered, not stored
                headers, _ = await generate(client, "order-43")  # nor held: it runs again
                assert len(recorder.requests) == 4
            else:
                with pytest.raises(openai.InternalServerError) as caught:
                    await generate(client)
                assert caught.value.status_code == 503 and len(recorder.requests) == 1
        actions = [e["action"] for e in logs if e["event"] == "idempotency_unavailable"]
        assert actions == (["claim", "store", "store"] if on_error == "open" else ["claim"])
