"""API-key authentication: Bearer keys compared by sha256 digest, per-key model allowlists."""
from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import hdrs, web
from imagegate.config.errors import GatewayError
from imagegate.config.schema import ApiKey, AuthConfig
from imagegate.middlewares.keys import record_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# with server.admin_keys set, only those keys read these; open (as /healthz) otherwise
ADMIN_PATHS = frozenset({"/status", "/status.json", "/metrics"})
OPEN_PREFIXES = ("/v1/images/files/",)  # signed links: the signature is the credential
log = structlog.get_logger("imagegate.auth")


def hash_key(key: str) -> str:
    # aiohttp keeps undecodable header bytes as surrogates: hashed as the bytes the client sent
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_table(auth: AuthConfig) -> dict[str, ApiKey]:
    return {k.key_sha256 or hash_key(k.key or ""): k for k in auth.keys}


def bearer_token(request: web.Request) -> str:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise GatewayError(
            "invalid_api_key",
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
        )
    return token.strip()


def auth_middleware(auth: AuthConfig, admin_keys: Iterable[str] = ()
                    ) -> Callable[..., Awaitable[web.StreamResponse]]:
    keys = key_table(auth)  # built once, not per request
    admins = frozenset(admin_keys)
    if not keys:
        log.warning("open_gateway", detail="no API keys configured: every client is admitted")

    @web.middleware
    async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in ADMIN_PATHS:
            if admins and hash_key(bearer_token(request)) not in admins:
                raise GatewayError("invalid_api_key", "This path needs one of the gateway's "
                                   "admin keys (server.admin_keys).")
            return await handler(request)
        if not keys or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await handler(request)
        key = keys.get(hash_key(bearer_token(request)))  # a digest lookup, no plaintext ==
        if key is None:
            raise GatewayError("invalid_api_key", "Incorrect API key provided.")
        record = record_of(request)
        record.api_key, record.key_id = key, key.id
        return await handler(request)

    return auth_mw


def check_model_allowed(request: web.Request, model: str) -> None:
    """403 when the caller's key has an allowlist without this public model name."""
    key = record_of(request).api_key
    if key is not None and key.models is not None and model not in key.models:
        raise GatewayError(
            "model_not_allowed",
            f"The API key '{key.id}' may not use the model '{model}'.",
            param="model",
        )


def allowed_models(request: web.Request, names: list[str],
                   public: dict[str, str] | None = None) -> list[str]:
    """The names (aliases too, given `public`: name -> its model) the caller's key may use."""
    key = record_of(request).api_key
    if key is None or key.models is None:
        return names
    return [n for n in names if (public or {}).get(n, n) in key.models]
