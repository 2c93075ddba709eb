"""Header values from outside (client field names, provider headers) made safe to write."""
from __future__ import annotations

import math
from collections.abc import Iterable
from urllib.parse import quote

import structlog
from aiohttp import web

MAX_VALUE_CHARS = 256  # one relayed provider value (retry-after, a processing time, a type)
MAX_LIST_CHARS = 512  # a list of names (x-imagegate-dropped-params)
MAX_NAME_CHARS = 64  # one name inside such a list
MAX_OWN_CHARS = 4096  # the safety net's bound on any value the gateway writes
MAX_RETRY_AFTER_S = 86400
log = structlog.get_logger("imagegate.headers")


def safe_value(value: str, limit: int = MAX_VALUE_CHARS) -> str | None:
    """A value relayed as it is when it is printable ASCII and bounded, else None (not sent)."""
    value = value.strip()
    # printable ASCII is exactly [\x20-\x7e]: two C checks, no pattern
    if not value or len(value) > limit or not (value.isascii() and value.isprintable()):
        return None
    return value


def header_name(text: str) -> str:
    """One outside name as a list item: printable ASCII, ',' and '%' percent-encoded, bounded."""
    encoded = quote(text, safe="!#$&'()*+-./:;<=>?@[]^_`{|}~ \"\\")
    if len(encoded) > MAX_NAME_CHARS:
        encoded = encoded[: MAX_NAME_CHARS - 3] + "..."
    return encoded


def header_list(names: Iterable[str], limit: int = MAX_LIST_CHARS) -> str:
    """`a,b,c` or, over `limit` characters, `a,b,+N more`: bounded whatever the client sent."""
    items = [header_name(n) for n in names]
    out: list[str] = []
    used = 0
    for i, item in enumerate(items):
        rest = len(items) - i - 1
        tail = len(f",+{rest} more") if rest else 0
        if used + len(item) + 1 + tail > limit:
            return ",".join([*out, f"+{len(items) - i} more"])
        out.append(item)
        used += len(item) + 1
    return ",".join(out)


def retry_after(value: str | None) -> str | None:
    """A provider's Retry-After as whole seconds >= 1 (DESIGN), or None when it is not one."""
    text = safe_value(value or "", 32)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None  # an HTTP-date, or garbage: the client gets no retry-after from us
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return str(min(MAX_RETRY_AFTER_S, max(1, math.ceil(seconds))))


async def enforce_safe_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare, last: a value aiohttp would refuse to write (a control character)
    or that clients refuse (too long) is encoded and bounded, never an empty reply."""
    joined = "".join(response.headers.values())  # nearly always: one check for all of them
    if len(joined) <= MAX_OWN_CHARS and joined.isascii() and joined.isprintable():
        return
    for name, value in list(response.headers.items()):
        if len(value) <= MAX_OWN_CHARS and value.isascii() and value.isprintable():
            continue
        fixed = quote(value, safe="".join(chr(c) for c in range(0x20, 0x7f) if chr(c) != "%"))
        response.headers[name] = fixed[:MAX_OWN_CHARS]
        log.warning("unsafe_header_encoded", header=name)
