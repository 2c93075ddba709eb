"""The gateway's one error type and the table of codes DESIGN.md promises."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Final

INVALID, UPSTREAM = "invalid_request_error", "upstream_error"

ERROR_CODES: Final[Mapping[str, tuple[int, str]]] = {
    "invalid_value": (400, INVALID),
    "invalid_api_key": (401, INVALID),
    "model_not_allowed": (403, "permission_error"),
    "not_found": (404, INVALID),
    "model_not_found": (404, INVALID),
    "method_not_allowed": (405, INVALID),
    "request_too_large": (413, INVALID),
    "idempotency_key_in_use": (409, INVALID),
    "idempotency_key_reused": (422, INVALID),
    "unsupported_encoding": (415, INVALID),
    "rate_limit_exceeded": (429, "rate_limit_error"),
    "budget_exceeded": (429, "insufficient_quota"),
    "content_policy_violation": (400, INVALID),
    "insufficient_quota": (402, "insufficient_quota"),
    "upstream_auth_failed": (502, UPSTREAM),
    "upstream_unavailable": (502, UPSTREAM),
    "upstream_timeout": (504, UPSTREAM),
    "upstream_rate_limited": (429, "rate_limit_error"),
    "upstream_busy": (429, "rate_limit_error"),
    "no_image": (502, UPSTREAM),
    "server_error": (500, "server_error"),
}


class GatewayError(Exception):
    """Raised anywhere; rendered as OpenAI's error envelope by middlewares/errors.py only."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
        wire_code: str | None = None,
        wire_type: str | None = None,
        gateway_fault: bool = False,
    ) -> None:
        super().__init__(message)
        default_status, self.type = ERROR_CODES[code]
        self.type = wire_type or self.type  # a provider's own OpenAI-shaped error keeps its type
        self.status = status or default_status
        self.code = wire_code or code
        self.message, self.param = message, param
        self.headers = dict(headers or {})
        # the gateway's own failure (its storage, its concurrency cap), not the provider's: it
        # never counts against a route's health and is never retried on another provider
        self.gateway_fault = gateway_fault
        # the provider's own words, made safe, for the upstream attempt's log line only
        self.provider_message: str | None = None
