"""JSON bodies checked for shape before decoding: bounded nesting, no repeated top-level key."""
from __future__ import annotations

import operator
import re

import msgspec
from imagegate.config.errors import GatewayError

MAX_DEPTH = 32  # OpenAI's bodies nest 3 deep; far below any recursion limit
_NEXT = re.compile(rb'[\[\]{},"]')
FLAT_SCAN_BYTES = 16384  # a small flat object (every generation body) is checked in one pass
# a JSON string, then a colon if it is a key; in a flat object strings follow one another
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"\s*:?')
_IS_KEY = operator.methodcaller("endswith", b":")  # a string followed by its colon
_KEY_NAME = operator.methodcaller("rstrip", b": \t\r\n")


def check_json_shape(raw: bytes) -> None:
    """400 for a body nested deeper than MAX_DEPTH, or naming a top-level key twice (the gateway
    would check one value and an upstream might read the other: `{"model": "a", "model": "b"}`
    must not slip past the allowlist). Malformed JSON is left to the decoder. Strings are
    skipped with bytes.find, so a body of base64 costs a memchr, not a regex."""
    if _flat_and_unique(raw):
        return
    depth, keys, expect_key, pos = 0, set[str](), False, 0
    while (m := _NEXT.search(raw, pos)) is not None:
        at = m.start()
        char = raw[at]
        pos = at + 1
        if char == 0x22:  # '"'
            pos = _string_end(raw, pos) + 1
            if expect_key:
                expect_key = False
                _new_key(keys, raw[at:pos])
        elif char in (0x7B, 0x5B):  # '{' '['
            depth += 1
            if depth > MAX_DEPTH:
                raise GatewayError("invalid_value", f"The JSON body is nested more than "
                                   f"{MAX_DEPTH} levels deep.")
            expect_key = depth == 1 and char == 0x7B
        elif char in (0x7D, 0x5D):  # '}' ']'
            depth -= 1
        else:  # ','
            expect_key = depth == 1


def _flat_and_unique(raw: bytes) -> bool:
    """True for a small object with no nesting and no repeated (plain) key: the common case,
    decided in C. Anything else takes the full scan."""
    # find, not `in`: Python 3.11's bytes `in` raises and clears a TypeError first (redact.py)
    if len(raw) > FLAT_SCAN_BYTES or raw.count(b"{") != 1 or raw.find(b"[") >= 0:
        return False
    if raw.find(b"\\") < 0:
        return _unique_unescaped(raw)
    keys = list(filter(_IS_KEY, _STRING.findall(raw)))  # C callables: no Python frame a token
    return b"".join(keys).find(b"\\") < 0 and len(set(map(_KEY_NAME, keys))) == len(keys)


def _unique_unescaped(raw: bytes) -> bool:
    """A flat object with no backslash, decoded and encoded again: each string comes out byte
    for byte as it went in (no escape to undo), and a repeated key leaves one member (its
    colon, and any colon in the dropped strings) behind. So the body names no key twice exactly
    when both texts hold as many colons (one a member, plus those inside strings). Five times
    cheaper than tokenising every string."""
    try:
        fields = _decode(raw)
    except msgspec.DecodeError:
        return False  # malformed: the full scan, then the decoder, say where
    return type(fields) is dict and raw.count(b":") == _encode(fields).count(b":")


_decode, _encode = msgspec.json.Decoder().decode, msgspec.json.Encoder().encode


def _string_end(raw: bytes, i: int) -> int:
    """The index of the quote closing a string whose text starts at i."""
    while (j := raw.find(b'"', i)) >= 0:
        k = j - 1
        while k >= i and raw[k] == 0x5C:  # backslashes before it: an odd count escapes it
            k -= 1
        if (j - 1 - k) % 2 == 0:
            return j
        i = j + 1
    return len(raw)


def _new_key(keys: set[str], token: bytes) -> None:
    name = _key(token)
    if name in keys:
        shown = name[:64]
        raise GatewayError("invalid_value", f"The JSON body names {shown!a} more than once.",
                           param=shown if shown.isprintable() else None)
    keys.add(name)


def _key(token: bytes) -> str:
    """A key as the decoder will see it (`"\\u006dodel"` is `model`)."""
    if b"\\" not in token:
        return token[1:-1].decode("utf-8", "surrogateescape")
    try:
        return str(msgspec.json.decode(token))
    except msgspec.DecodeError:
        return token.decode("utf-8", "surrogateescape")
