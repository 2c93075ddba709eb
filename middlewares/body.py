"""Request bodies refused before they are read: declared too large (413), content-encoded (415)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, hdrs, web
from imagegate.config.errors import GatewayError
from imagegate.middlewares.errors import render_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IDENTITY = ("", "identity")


def refusal(request: web.Request, max_bytes: int) -> GatewayError | None:
    length = request.content_length
    if length is not None and length > max_bytes:
        return GatewayError("request_too_large", f"The request body is larger than the "
                            f"{max_bytes} bytes the gateway accepts.")
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if request.body_exists and encoding not in IDENTITY:
        # aiohttp would inflate it, and a forwarded body would no longer match its headers
        return GatewayError("unsupported_encoding", "Send the request body uncompressed: "
                            "Content-Encoding is not supported.")
    return None


def body_middleware(max_bytes: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def body_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        error = refusal(request, max_bytes)
        if error is None:
            return await handler(request)
        response = render_error(error)
        response.force_close()  # the unread body is not waited for
        return response

    return body_mw


def expect_handler(max_bytes: int) -> Callable[[web.Request], Awaitable[None]]:
    """`Expect: 100-continue`: the body is asked for only when it will be accepted; otherwise
    the chain answers 413/415 at once, without the client sending it."""

    async def expect(request: web.Request) -> None:
        expect = request.headers.get(hdrs.EXPECT, "").lower()
        if request.version == HttpVersion11 and expect == "100-continue" and (
                refusal(request, max_bytes) is None):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer itself has not begun

    return expect
