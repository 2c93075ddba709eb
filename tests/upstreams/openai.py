"""A mock OpenAI Images API on loopback: records what it received, answers in OpenAI's format."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.upstreams import common

API_KEY = "sk-upstream-secret"


def png_bytes(color: tuple[int, int, int] = (10, 120, 200), size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


PNG = png_bytes()
# one schema-complete partial-image event, for upstreams that break after it
PARTIAL_EVENT = (b'event: image_generation.partial_image\ndata: {"type": '
                 b'"image_generation.partial_image","b64_json":"aGk=","created_at":1,'
                 b'"size":"1024x1024","quality":"low","background":"opaque",'
                 b'"output_format":"png","partial_image_index":0}\n\n')
PNG_B64 = base64.b64encode(PNG).decode()


def breaking_stream(calls: list[int], pause_s: float = 0.0) -> Any:
    """A handler that starts a stream with one partial image, then dies mid-stream (after
    `pause_s`, so the event can reach the client first); counts its calls in calls[0]."""
    async def breaking(request: web.Request) -> web.StreamResponse:
        calls[0] += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(PARTIAL_EVENT)
        if pause_s:
            await asyncio.sleep(pause_s)
        assert request.transport is not None
        request.transport.close()  # the provider dies mid-stream
        return resp

    return breaking


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    text: str | None = None


@dataclass
class Received(common.Received):
    """The shared record, plus the multipart parts and the JSON body's size."""

    parts: list[Part] = field(default_factory=list)
    body_size: int = 0


@dataclass
class Recorder:
    requests: list[Received] = field(default_factory=list)
    mode: str = "ok"  # ok | url | policy | auth | rate_limit | quota | server_error | unavailable
    delay_s: float = 0.0
    stream_gap_s: float = 0.01  # between the events of a stream
    gate: asyncio.Event | None = None  # set: answers wait until it is set (a slow provider)
    retry_after: str = "7"  # on rate_limit and unavailable
    ids: list[str] = field(default_factory=list)  # the x-request-id of every answer, in order
    image_b64: str = PNG_B64

    @property
    def last(self) -> Received:
        return self.requests[-1]


def _error(status: int, message: str, type_: str, code: str | None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


FAULTS = {
    "policy": lambda r: _error(400, "Your request was rejected by the safety system.",
                             "image_generation_user_error", "moderation_blocked"),
    "auth": lambda r: _error(401, f"Incorrect API key provided: {API_KEY[:6]}***.",
                           "invalid_request_error", "invalid_api_key"),
    "rate_limit": lambda r: _error(429, "Rate limit exceeded for images per minute.",
                                   "requests", "rate_limit_exceeded",
                                   {"retry-after": r.retry_after}),
    "unavailable": lambda r: _error(503, "The engine is currently overloaded, please try again "
                                    "later.", "server_error", None,
                                    {"retry-after": r.retry_after}),
    "quota": lambda r: _error(429, "You exceeded your current quota, please check your plan and "
                            "billing details.", "insufficient_quota", "insufficient_quota"),
    "server_error": lambda r: _error(500, "The server had an error while processing your "
                                   "request.", "server_error", None),
}


async def _read_parts(request: web.Request) -> list[Part]:
    parts = []
    reader = await request.multipart()
    async for part in reader:
        data = await part.read(decode=False)
        # a real OpenAI answers a field that is not UTF-8 with a 400, never a 500
        text = data.decode("utf-8", "replace") if part.filename is None else None
        parts.append(Part(part.name or "", part.filename,
                          part.headers.get("Content-Type"), len(data),
                          hashlib.sha256(data).hexdigest(), text))
    return parts


def make_app(recorder: Recorder) -> web.Application:
    async def images(request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path, dict(request.headers))
        try:
            return await _answer(request, received)
        except Exception:  # what OpenAI does with a body it cannot parse: a 400
            return _error(400, "We could not parse the body of your request.",
                          "invalid_request_error", None)

    async def _answer(request: web.Request, received: Received) -> web.StreamResponse:
        if request.content_type == "multipart/form-data":
            received.parts = await _read_parts(request)
            fields = {p.name: p.text for p in received.parts if p.text is not None}
            bad = [p for p in received.parts if p.filename and p.content_type ==
                   "application/octet-stream"]
            if bad:
                recorder.requests.append(received)
                return _error(400, "Invalid file 'image': unsupported mimetype.",
                              "invalid_request_error", "unsupported_file_mimetype")
        else:
            raw = await request.read()
            received.body_size = len(raw)
            received.json = fields = json.loads(raw)
        recorder.requests.append(received)
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return FAULTS["auth"](recorder)
        if recorder.delay_s:
            await asyncio.sleep(recorder.delay_s)
        if recorder.gate is not None:
            await recorder.gate.wait()
        if recorder.mode in FAULTS:
            return FAULTS[recorder.mode](recorder)
        if str(fields.get("stream")).lower() == "true":
            return await _stream(request, recorder)
        n = int(fields.get("n") or 1)
        if recorder.mode == "url":
            base = f"http://{request.host}/files/x.png"
            data = [{"url": f"{base}?i={i}", "revised_prompt": "a revised prompt"}
                    for i in range(n)]
        else:
            data = [{"b64_json": recorder.image_b64} for _ in range(n)]
        return web.json_response({
            "created": 1713833628, "data": data, "output_format": "png",
            "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                      "input_tokens_details": {"image_tokens": 40, "text_tokens": 10}},
        })

    async def stream(request: web.Request) -> web.StreamResponse:
        return await _stream(request, recorder)

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def request_id(request: web.Request, response: web.StreamResponse) -> None:
        # OpenAI answers every request with its own id, the one its support desk asks for
        recorder.ids.append(f"req_{hashlib.sha256(str(len(recorder.ids)).encode()).hexdigest()[:24]}")
        response.headers["x-request-id"] = recorder.ids[-1]

    app = web.Application(client_max_size=200 * 1024 * 1024)
    app.on_response_prepare.append(request_id)
    app.router.add_post("/images/generations", images)
    app.router.add_post("/images/edits", images)
    app.router.add_post("/images/variations", images)
    app.router.add_get("/files/x.png", file)
    return app


async def _stream(request: web.Request, recorder: Recorder) -> web.StreamResponse:
    kind = "image_edit" if request.path.endswith("edits") else "image_generation"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    events = [
        {"type": f"{kind}.partial_image", "b64_json": recorder.image_b64, "created_at": 1,
         "size": "1024x1024", "quality": "high", "background": "opaque", "output_format": "png",
         "partial_image_index": 0},
        {"type": f"{kind}.completed", "b64_json": recorder.image_b64, "created_at": 1,
         "size": "1024x1024", "quality": "high", "background": "opaque", "output_format": "png",
         "usage": {"total_tokens": 10, "input_tokens": 5, "output_tokens": 5,
                   "input_tokens_details": {"text_tokens": 5, "image_tokens": 0}}},
    ]
    for event in events:
        frame = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
        await resp.write(frame.encode())
        await asyncio.sleep(recorder.stream_gap_s)
    await resp.write_eof()
    return resp
