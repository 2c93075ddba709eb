"""The featured forwarder: bench/run.py's bare forwarder plus the work the gateway does for every
passthrough generation, written inline in one handler with no middleware, no route table and no
fallback. It prices the features apart from the gateway's structure: the gateway over this one
is what the middleware chain, the typed request, the routing and the record keeping cost; this
one over the bare forwarder is what the features cost however they are arranged.

What it does per request, with the gateway's own functions where the gateway has one:
a request id; the key's bearer token hashed with sha256 and looked up; the JSON body's shape
checked (middlewares/jsonshape.py) and decoded by msgspec into a typed struct; the upstream
call with a total and a connect timeout and the gateway's headers; the answer's images and usage
counted (proxy/passthrough.py's `counted`); six metric updates through prometheus_client's
cached children (in-flight, requests, request duration, upstream calls, upstream duration,
images); two JSON log lines rendered by proxy/logs.py's `render_line` (scrubbed of configured
secrets, checked for base64 runs) and written once per loop turn; a cost header.

It leaves out what the bench's request never needs: limits, budgets, idempotency, model
aliases and defaults, multipart, streams, error rendering, the status page.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import sys
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from imagegate.middlewares.jsonshape import check_json_shape
from imagegate.middlewares.redact import register
from imagegate.proxy.logs import iso_text, render_line
from imagegate.proxy.passthrough import counted
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Generate(msgspec.Struct, kw_only=True):
    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None


class _Metrics:
    def __init__(self) -> None:
        r = CollectorRegistry()
        self.in_flight = Gauge("in_flight_requests", "", registry=r)
        self.requests = Counter("requests", "", ["endpoint", "model", "key", "status"],
                                registry=r)
        self.duration = Histogram("request_duration_seconds", "", ["endpoint", "model"],
                                  buckets=SECONDS, registry=r)
        self.upstream = Counter("upstream_requests", "", ["provider", "model", "outcome"],
                                registry=r)
        self.upstream_duration = Histogram("upstream_duration_seconds", "",
                                           ["provider", "model"], buckets=SECONDS, registry=r)
        self.images = Counter("images", "", ["model", "provider"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        found = self._children.get((metric, *labels))
        if found is None:
            found = self._children[(metric, *labels)] = metric.labels(*labels)
        return found


class _Lines:
    """Rendered lines, written once per loop turn."""

    def __init__(self, file: Any) -> None:
        self.file, self.pending = file, []

    def add(self, fields: dict[str, Any]) -> None:
        fields["level"], fields["timestamp"] = "info", iso_text(time.time())
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(render_line(fields, repr))

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        self.file.write(b"\n".join([*lines, b""]))
        self.file.flush()


def featured_app(upstream: str, key: str, log_file: Any) -> web.Application:
    keys = {hashlib.sha256(key.encode()).hexdigest(): "bench"}
    register({"sk-a-configured-provider-secret"})
    decode = msgspec.json.Decoder(Generate).decode
    metrics, lines = _Metrics(), _Lines(log_file)
    prefix, count = "req_" + secrets.token_hex(8), itertools.count()
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    url = f"{upstream}/images/generations"
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> Any:
        app[session_key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            headers={"Accept-Encoding": "identity", "User-Agent": "imagegate-bench"})
        yield
        await app[session_key].close()

    async def generations(request: web.Request) -> web.Response:
        started = time.perf_counter()
        request_id = f"{prefix}{next(count):016x}"
        metrics.in_flight.inc()
        try:
            auth = request.headers.get("Authorization", "")
            who = keys.get(hashlib.sha256(auth[7:].encode()).hexdigest()) \
                if auth.startswith("Bearer ") else None
            if who is None:
                return web.json_response({"error": {"message": "no key"}}, status=401)
            raw = await request.read()
            check_json_shape(raw)
            model = decode(raw).model or "dall-e-2"
            sent = time.perf_counter()
            async with request.app[session_key].post(
                    url, data=raw, timeout=timeout, allow_redirects=False,
                    headers={"Content-Type": "application/json", "Authorization": "Bearer k",
                             "X-Client-Request-Id": request_id}) as r:
                answer, status = await r.read(), r.status
            took = time.perf_counter() - sent
            metrics.child(metrics.upstream, "openai", model, "ok").inc()
            metrics.child(metrics.upstream_duration, "openai", model).observe(took)
            lines.add({"provider": "openai", "model": model, "path": "/images/generations",
                       "status": status, "outcome": "ok", "duration_ms": round(took * 1000, 2),
                       "event": "upstream", "request_id": request_id})
            images, _usage = counted(answer)
            metrics.child(metrics.images, model, "openai").inc(images)
            response = web.Response(status=status, body=answer, content_type="application/json",
                                    headers={"x-request-id": request_id,
                                             "x-imagegate-cost-usd": "0.04"})
            took = time.perf_counter() - started
            metrics.child(metrics.requests, "generations", model, who, str(status)).inc()
            metrics.child(metrics.duration, "generations", model).observe(took)
            lines.add({"method": "POST", "path": request.path, "status": status,
                       "duration_ms": round(took * 1000, 2), "key": who, "model": model,
                       "provider": "openai", "images": images, "cost_usd": 0.04,
                       "bytes_in": len(raw), "bytes_out": len(answer), "event": "request",
                       "request_id": request_id})
            return response
        finally:
            metrics.in_flight.dec()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/images/generations", generations)
    return app


if __name__ == "__main__":
    sys.exit("run by bench/run.py --baseline --featured")
