"""OpenAI's own JSON Schemas (vendored in openai_images.json) applied to what the gateway says.

`checked_sdk()` is the official SDK with a transport that validates every images answer, every
stream event and every error envelope it receives before the SDK parses it: the strict client
the e2e tests use for every provider.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
from jsonschema import Draft202012Validator

try:  # the HTTP client the installed SDK is built on (httpx2 from openai 3, httpx before)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs
    import httpx  # type: ignore[no-redef]

SPEC = json.loads(Path(__file__).with_name("openai_images.json").read_text())
EVENTS = {
    "image_generation.partial_image": "ImageGenPartialImageEvent",
    "image_generation.completed": "ImageGenCompletedEvent",
    "image_edit.partial_image": "ImageEditPartialImageEvent",
    "image_edit.completed": "ImageEditCompletedEvent",
}
_VALIDATORS: dict[str, Draft202012Validator] = {}


def validator(name: str) -> Draft202012Validator:
    if name not in _VALIDATORS:
        schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
        Draft202012Validator.check_schema(schema)
        _VALIDATORS[name] = Draft202012Validator(schema)
    return _VALIDATORS[name]


def problems(name: str, instance: Any) -> list[str]:
    """What in `instance` breaks OpenAI's schema `name` (empty: it conforms)."""
    return [f"{name} at /{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in validator(name).iter_errors(instance)]


def check(name: str, instance: Any) -> None:
    found = problems(name, instance)
    assert not found, "\n".join(found)


def check_event(data: bytes) -> str:
    """One SSE event's data against the schema its `type` names; returns the type."""
    event = json.loads(data)
    kind = event.get("type")
    if kind == "error":  # not in the images stream union: its `error` is OpenAI's Error
        check("Error", event.get("error"))
    else:
        assert kind in EVENTS, f"stream event type {kind!r} is not one of OpenAI's"
        check(EVENTS[kind], event)
    return str(kind)


def check_body(status: int, body: bytes) -> None:
    check("ImagesResponse" if status < 400 else "ErrorResponse", json.loads(body))


class _CheckedEvents(httpx.AsyncByteStream):
    """Passes an event stream through, validating each event as it completes."""

    def __init__(self, inner: httpx.AsyncByteStream, seen: list[str]) -> None:
        self.inner, self.seen, self.buffer = inner, seen, b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.buffer += chunk
            while b"\n\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n\n", 1)
                data = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
                if data:  # comment-only blocks are keep-alives
                    self.seen.append(check_event(b"\n".join(data)))
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class SchemaCheckingTransport(httpx.AsyncBaseTransport):
    """Validates /v1/images/* answers (JSON bodies and event streams) against OpenAI's schemas."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies = 0
        self.events: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        path = request.url.path
        if not path.startswith("/v1/images/") or path.startswith("/v1/images/files/"):
            return response
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _CheckedEvents(response.stream, self.events)
            return response
        body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
        await response.aclose()
        check_body(response.status_code, body)
        self.bodies += 1
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=httpx.ByteStream(body), extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


def checked_sdk(base_url: str, api_key: str = "x", **options: Any) -> openai.AsyncOpenAI:
    """AsyncOpenAI(max_retries=0) whose every images answer is checked against OpenAI's schema;
    `sdk.schema_checks` is the transport (bodies and event types it checked)."""
    transport = SchemaCheckingTransport()
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                             http_client=httpx.AsyncClient(transport=transport), **options)
    sdk.schema_checks = transport  # type: ignore[attr-defined]
    return sdk
