"""Configured secrets kept out of every error body and log line, whoever echoes them."""
from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec
from imagegate.config.schema import Config

MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words
MASK = "[redacted]"
_registered: set[str] = set()
_pattern: re.Pattern[str] | None = None
_line_pattern: re.Pattern[bytes] | None = None  # the same secrets in a rendered JSON line
_line_forms: tuple[bytes, ...] = ()  # and as plain searches, while they are few
FEW_SECRETS = 32  # up to this many forms, one substring search each beats sre's alternation


def configured_secrets(config: Config) -> set[str]:
    """Provider keys and headers (often credentials), client keys, the link-signing secret,
    the S3 secret key."""
    found = {config.storage.signing_secret}
    if config.storage.s3 is not None:
        found.add(config.storage.s3.secret_access_key)
    for provider in config.providers.values():
        found.add(getattr(provider, "api_key", ""))
        found.update(provider.headers.values())
    found.update(k.key or "" for k in config.auth.keys)
    return {s for s in found if len(s) >= MIN_SECRET_CHARS}


def register(secrets: Iterable[str]) -> None:
    """Adds to the process-wide set every log line and error body is scrubbed of."""
    global _pattern, _line_pattern, _line_forms
    _registered.update(s for s in secrets if len(s) >= MIN_SECRET_CHARS)
    if _registered:
        ordered = sorted(_registered, key=len, reverse=True)  # longest first: no partial masks
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))
        # as they appear inside a JSON string: raw, and escaped (a quote, a backslash)
        forms = {f for s in ordered for f in (s.encode(), msgspec.json.encode(s)[1:-1])}
        _line_pattern = re.compile(b"|".join(
            re.escape(f) for f in sorted(forms, key=len, reverse=True)))
        _line_forms = tuple(forms) if len(forms) <= FEW_SECRETS else ()


def scrub(text: str) -> str:
    if _pattern is None or len(text) < MIN_SECRET_CHARS or _pattern.search(text) is None:
        return text  # one C-level search first: most text holds no secret
    return _pattern.sub(MASK, text)


def scrub_line(line: bytes) -> bytes:
    """A rendered JSON log line with every configured secret masked: searched over the whole
    line, not field by field (a substring search per secret while they are few, else one
    pattern search). Masking inside a JSON string keeps the line valid."""
    if _line_pattern is None:
        return line
    if _line_forms:
        for form in _line_forms:
            # find, not `in`: Python 3.11's bytes `in` first tries its operand as an integer
            # and raises and clears a TypeError each time (~2 K instructions a search)
            if line.find(form) >= 0:
                return _line_pattern.sub(MASK.encode(), line)
        return line
    if _line_pattern.search(line) is None:
        return line
    return _line_pattern.sub(MASK.encode(), line)
