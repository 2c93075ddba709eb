"""Renders every error in OpenAI's shape; the only place an error becomes a response."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import hdrs, web
from imagegate.config.api import ErrorBody, ErrorEnvelope
from imagegate.config.errors import GatewayError
from imagegate.middlewares.context import new_request_id
from imagegate.middlewares.headers import retry_after, safe_value
from imagegate.middlewares.redact import scrub

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("imagegate.errors")
_encode = msgspec.json.Encoder().encode
MAX_PATH_CHARS = 100  # a path named in a message: never a client's 8 KB URL echoed whole

_HTTP_EXCEPTIONS: dict[int, tuple[str, str]] = {
    404: ("not_found", "Unknown path: {method} {path}"),
    405: ("method_not_allowed", "Method {method} is not allowed on {path}"),
    413: ("request_too_large", "The request body is larger than the gateway accepts."),
}


def error_body(error: GatewayError) -> bytes:
    """The envelope's bytes, its message scrubbed of every configured secret (a provider that
    echoes the gateway's own key in its message must not pass it on)."""
    message = scrub(error.message)
    return _encode(ErrorEnvelope(ErrorBody(message, error.type, error.param, error.code)))


def error_headers(error: GatewayError) -> dict[str, str]:
    """An error's headers (often a provider's retry-after): checked, never written raw."""
    headers = {}
    for name, value in error.headers.items():
        safe = retry_after(value) if name.lower() == "retry-after" else safe_value(value)
        if safe is not None:
            headers[name] = safe
    return headers


def render_error(error: GatewayError) -> web.Response:
    return web.Response(status=error.status, body=error_body(error),
                        content_type="application/json", headers=error_headers(error))


def shown_path(request: web.Request) -> str:
    path = request.path.encode("ascii", "backslashreplace").decode()
    return path if len(path) <= MAX_PATH_CHARS else path[:MAX_PATH_CHARS] + "..."


def from_http_exception(request: web.Request, exc: web.HTTPException) -> GatewayError:
    code, template = _HTTP_EXCEPTIONS.get(exc.status, ("invalid_value", exc.reason))
    method = request.method[:16].encode("ascii", "backslashreplace").decode()
    message = template.format(method=method, path=shown_path(request))
    if code == "invalid_value":
        return GatewayError(code, message, status=exc.status)
    return GatewayError(code, message)


async def shape_http_exceptions(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: aiohttp's own errors raised before the chain runs (an unknown
    `Expect` on an unknown path: 417) are OpenAI-shaped too."""
    if isinstance(response, web.HTTPException) and response.status >= 400:
        body = error_body(from_http_exception(request, response))
        response.body = body
        response.content_type = "application/json"
        response.headers[hdrs.CONTENT_LENGTH] = str(len(body))  # set for the old text
        response.headers.setdefault("x-request-id", new_request_id())  # the chain did not run


def _framing_dirty(request: web.Request) -> bool:
    """A response began on this connection (its headers went out, or failed half-way and left
    the writer set up for chunks)."""
    writer = request.writer
    return bool(writer.output_size or getattr(writer, "chunked", False))


def errors_middleware() -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as error:
            return _answer(request, render_error(error))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _answer(request, render_error(from_http_exception(request, exc)))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled_error", path=shown_path(request))
            return _answer(request, render_error(
                GatewayError("server_error", "The gateway failed unexpectedly.")))

    return errors_mw


def _answer(request: web.Request, response: web.Response) -> web.StreamResponse:
    """An error after an answer had begun is framed on its own and closes the connection: left
    in chunked mode, a 500 with a Content-Length would desync a pooling proxy."""
    if not _framing_dirty(request):
        return response
    log.warning("connection_closed_after_failed_answer", path=shown_path(request))
    writer: Any = request.writer
    if writer.output_size:  # bytes went out: nothing can be framed after them
        request.protocol.force_close()
        return response
    writer.chunked, writer._compress = False, None  # nothing was sent: start clean
    response.force_close()
    return response
