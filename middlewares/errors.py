"""Renders every error in OpenAI's shape; the only place an error becomes a response."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web
from imagegate.config.api import ErrorBody, ErrorEnvelope
from imagegate.config.errors import GatewayError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("imagegate.errors")
_encode = msgspec.json.Encoder().encode

_HTTP_EXCEPTIONS: dict[int, tuple[str, str]] = {
    404: ("not_found", "Unknown path: {method} {path}"),
    405: ("method_not_allowed", "Method {method} is not allowed on {path}"),
    413: ("request_too_large", "The request body is larger than the gateway accepts."),
}


def render_error(error: GatewayError) -> web.Response:
    body = ErrorEnvelope(ErrorBody(error.message, error.type, error.param, error.code))
    return web.Response(
        status=error.status,
        body=_encode(body),
        content_type="application/json",
        headers=error.headers,
    )


def from_http_exception(request: web.Request, exc: web.HTTPException) -> GatewayError:
    code, template = _HTTP_EXCEPTIONS.get(exc.status, ("invalid_value", exc.reason))
    message = template.format(method=request.method, path=request.path)
    if code == "invalid_value":
        return GatewayError(code, message, status=exc.status)
    return GatewayError(code, message)


def errors_middleware() -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as error:
            return render_error(error)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return render_error(from_http_exception(request, exc))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled_error", path=request.path)
            return render_error(GatewayError("server_error", "The gateway failed unexpectedly."))

    return errors_mw
