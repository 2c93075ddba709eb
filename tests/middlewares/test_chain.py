"""context, errors, auth and metrics, each alone on an inline app with a stub handler."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.middlewares.auth import auth_middleware
from imagegate.middlewares.context import context_middleware, set_request_id_header
from imagegate.middlewares.errors import errors_middleware
from imagegate.middlewares.keys import record_of
from imagegate.middlewares.metrics import NONE, Metrics, metrics_middleware
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.conftest import make_config


def inline(*middlewares: Any, handler: Any) -> web.Application:
    app = web.Application(middlewares=list(middlewares))
    app.on_response_prepare.append(set_request_id_header)
    app.router.add_get("/x", handler)
    return app


async def test_context_keeps_a_valid_request_id_and_logs_one_line(aiohttp_client: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=record_of(request).request_id)

    client = await aiohttp_client(inline(context_middleware(), handler=handler))
    with capture_logs() as logs:
        resp = await client.get("/x", headers={"x-request-id": "abc.123"})
        bad = await client.get("/x", headers={"x-request-id": "a b\tc"})
    assert resp.headers["x-request-id"] == await resp.text() == "abc.123"
    assert bad.headers["x-request-id"].startswith("req_")
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert [(e["status"], e["path"]) for e in lines] == [(200, "/x"), (200, "/x")]


async def test_errors_renders_gateway_errors_and_hides_bugs(aiohttp_client: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.query.get("bug"):
            raise RuntimeError("secret internals")
        raise GatewayError("model_not_found", "no such model", param="model")

    client = await aiohttp_client(inline(errors_middleware(), handler=handler))
    resp = await client.get("/x")
    assert resp.status == 404 and (await resp.json())["error"] == {
        "message": "no such model", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}
    with capture_logs():
        bug = await client.get("/x?bug=1")
    body = await bug.text()
    assert bug.status == 500 and "secret internals" not in body
    assert (await bug.json())["error"]["type"] == "server_error"


async def test_auth_admits_known_keys_only(aiohttp_client: Any) -> None:
    config = make_config({"auth": {"keys": [{"id": "team-a", "key": "k-a"}]}})

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=record_of(request).key_id or "")

    client = await aiohttp_client(inline(errors_middleware(), auth_middleware(config.auth),
                                         handler=handler))
    ok = await client.get("/x", headers={"Authorization": "Bearer k-a"})
    assert ok.status == 200 and await ok.text() == "team-a"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k-a"}):
        resp = await client.get("/x", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"


async def test_metrics_count_every_final_status(aiohttp_client: Any) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    async def handler(request: web.Request) -> web.Response:
        raise GatewayError("invalid_value", "bad")

    client = await aiohttp_client(inline(metrics_middleware(metrics), errors_middleware(),
                                         handler=handler))
    for _ in range(3):
        assert (await client.get("/x")).status == 400
    assert registry.get_sample_value("imagegate_requests_total", {
        "endpoint": "/x", "model": NONE, "key": NONE, "status": "400"}) == 3
    assert registry.get_sample_value("imagegate_in_flight_requests") == 0


def test_request_ids_are_unique_in_a_process_and_across_a_fork() -> None:
    import os

    from imagegate.middlewares.context import new_request_id

    ours = [new_request_id() for _ in range(1000)]
    assert len(set(ours)) == 1000 and all(len(i) == 36 and i.startswith("req_") for i in ours)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker draws its own prefix: its ids never repeat the parent's
        os.write(write, "\n".join(new_request_id() for _ in range(1000)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as child:
        theirs = child.read().split("\n")
    os.waitpid(pid, 0)
    assert len(theirs) == 1000 and not set(theirs) & set(ours + [new_request_id()])


async def test_a_request_that_held_megabytes_leaves_no_cyclic_garbage(aiohttp_client: Any
                                                                      ) -> None:
    """The server collects the young generation rarely (proxy/cli.py): a request that held
    images worth megabytes has its reference cycles (a failed download's exception, traceback
    and frames) collected as it ends, not whenever the next threshold comes."""
    import asyncio
    import gc
    import weakref

    from imagegate.middlewares.context import COLLECT_AFTER_BYTES

    class Held:  # what a failed download's frames keep: its bytes, in a cycle
        def __init__(self) -> None:
            self.data = bytes(1024)
            self.me = self

    left: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        held = Held()
        left[request.query["size"]] = weakref.ref(held)
        record_of(request).held_bytes = int(request.query["size"])
        return web.Response(text="ok")

    client = await aiohttp_client(inline(context_middleware(), handler=handler))
    thresholds = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        with capture_logs():
            assert (await client.get("/x", params={"size": "100"})).status == 200
            for _ in range(3):
                await asyncio.sleep(0)
            assert left["100"]() is not None  # a small request's garbage waits for the GC
            assert (await client.get("/x", params={"size": str(COLLECT_AFTER_BYTES)})).status == 200
            for _ in range(3):
                await asyncio.sleep(0)
        assert left[str(COLLECT_AFTER_BYTES)]() is None  # collected as its request ended
        assert left["100"]() is None  # the same collection took the small one's too
    finally:
        gc.enable()
        gc.set_threshold(*thresholds)
