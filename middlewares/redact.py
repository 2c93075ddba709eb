"""Configured secrets kept out of every error body and log line, whoever echoes them."""
from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from imagegate.config.schema import Config

MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words
MASK = "[redacted]"
_registered: set[str] = set()
_pattern: re.Pattern[str] | None = None


def configured_secrets(config: Config) -> set[str]:
    """Provider keys and headers (often credentials), client keys, the link-signing secret."""
    found = {config.storage.signing_secret}
    for provider in config.providers.values():
        found.add(getattr(provider, "api_key", ""))
        found.update(provider.headers.values())
    found.update(k.key or "" for k in config.auth.keys)
    return {s for s in found if len(s) >= MIN_SECRET_CHARS}


def register(secrets: Iterable[str]) -> None:
    """Adds to the process-wide set every log line and error body is scrubbed of."""
    global _pattern
    _registered.update(s for s in secrets if len(s) >= MIN_SECRET_CHARS)
    if _registered:
        ordered = sorted(_registered, key=len, reverse=True)  # longest first: no partial masks
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def scrub(text: str) -> str:
    if _pattern is None or len(text) < MIN_SECRET_CHARS or _pattern.search(text) is None:
        return text  # one C-level search first: most text holds no secret
    return _pattern.sub(MASK, text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def scrub_processor(logger: Any, method: str, event: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    """structlog processor: every string value of a log event, scrubbed. Runs on every line, so
    the common values (short strings, numbers, None) cost a type check or two each."""
    pattern = _pattern
    if pattern is None:
        return event
    for key, value in event.items():
        if isinstance(value, str):
            if len(value) >= MIN_SECRET_CHARS and pattern.search(value) is not None:
                event[key] = pattern.sub(MASK, value)
        elif isinstance(value, dict | list | tuple):
            event[key] = _scrub_value(value)
    return event
