"""Hypothesis strategies for hostile requests: bodies, forms, headers, paths, as raw bytes."""
from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from tests.conftest import GATEWAY_KEY
from tests.rawhttp import request
from tests.upstreams.openai import PNG

MODELS = ["gpt-image-1", "house", "seedream", "fallback", "not-allowed", "dall-e-2", ""]
FIELDS = ["model", "prompt", "n", "size", "quality", "response_format", "output_format",
          "output_compression", "background", "style", "moderation", "partial_images", "stream",
          "user", "seed", "input_fidelity", "images", "mask"]
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
ALPHABET = list("ab z09_-.,;:\"'\\/{}[]%+=") + [chr(c) for c in range(0x20)] + [
    "\x7f", "\x85", "é", "²", "\u2028", "\ufeff", "\U0001f600", "\ud800", "\udcff"]
HOSTILE_TEXT = st.text(st.sampled_from(ALPHABET), max_size=24)
NAMES = st.sampled_from(FIELDS) | HOSTILE_TEXT | st.sampled_from(["\u001f", "a\r\nb", "\u007f"])

GOOD: dict[str, Any] = {
    "model": st.sampled_from(MODELS),
    "prompt": st.sampled_from(["a cat", "p"]) | HOSTILE_TEXT | st.just("x" * 40000),
    "n": st.integers(-2, 12),
    "size": st.sampled_from(["auto", "256x256", "1024x1024", "2K", "0x0", "99999x1", "1e3x1"]),
    "quality": st.sampled_from(["auto", "low", "high", "standard", "hd", "ultra"]),
    "response_format": st.sampled_from(["url", "b64_json", "png"]),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]),
    "output_compression": st.integers(-5, 120),
    "background": st.sampled_from(["transparent", "opaque", "auto"]),
    "stream": st.booleans(),
    "partial_images": st.integers(-1, 4),
    "seed": st.integers(-(2 ** 70), 2 ** 70),
}
JSON_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=5)
IMAGE_REF = st.fixed_dictionaries({}, optional={
    "image_url": st.sampled_from([PNG_URL, "data:image/png;base64,!!", "data:text/plain;base64,"
                                  "aGk=", "http://10.0.0.1/a.png", "http://127.0.0.1:1/a.png",
                                  "ftp://x/y", "http://[::1]:99999/", "", "data:,x"]) | JSON_ANY,
    "file_id": st.sampled_from(["file-abc", ""]) | JSON_ANY,
})


@st.composite
def json_object(draw: Any, edit: bool) -> bytes:
    body: dict[str, Any] = {}
    for name in set(draw(st.lists(st.sampled_from(FIELDS), max_size=8))):
        typed = GOOD.get(name)
        body[name] = draw(typed | JSON_ANY if typed is not None else JSON_ANY)
    body.setdefault("prompt", "a cat")
    if edit:
        body["images"] = draw(st.lists(IMAGE_REF, min_size=0, max_size=18) | JSON_ANY)
        if draw(st.booleans()):
            body["mask"] = draw(IMAGE_REF)
    for _ in range(draw(st.integers(0, 3))):
        body[draw(NAMES)] = draw(JSON_ANY)  # unknown fields with hostile names
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # a duplicated key: checked on one value, forwarded both?
        text = text[:-1] + (", " if len(body) else "") + '"model": "not-allowed"}'
    return text.encode("utf-8", "surrogatepass")


@st.composite
def json_body(draw: Any, edit: bool = False) -> bytes:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        depth = draw(st.integers(1, 3000))
        return b'{"prompt": "p", "x": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:
        return json.dumps(draw(JSON_ANY)).encode()
    if kind == 3:
        return draw(json_object(edit))[: draw(st.integers(0, 200))]  # truncated
    if kind == 4:
        return b'{"prompt": "' + b"\\ud800" * draw(st.integers(1, 3)) + b'"}'
    return draw(json_object(edit))


AUTH = st.sampled_from([f"Bearer {GATEWAY_KEY}"] * 6 + [
    "", "Bearer", "Bearer ", "bearer " + GATEWAY_KEY, "Basic abc", "Bearer \udcff",
    f"Bearer {GATEWAY_KEY}\udcff", "Bearer wrong", "Bearer " + "k" * 5000, "Bearer ig-all",
])
CONTENT_TYPES = ["application/json", "application/json; charset=latin-1", "text/plain", "",
                 "multipart/form-data", "multipart/form-data; boundary=", "application/x-www-"
                 "form-urlencoded", "application/json; boundary=x", "\udcff/\udcfe"]


@st.composite
def headers(draw: Any, content_type: str | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    auth = draw(AUTH)
    if auth:
        out.append(("Authorization", auth))
    if content_type is not None:
        out.append(("Content-Type", content_type if draw(st.integers(0, 9)) else
                    draw(st.sampled_from(CONTENT_TYPES))))
    extras = {
        "x-request-id": st.text(max_size=300) | st.just("ok-id_1"),
        "Idempotency-Key": st.text(max_size=300),
        "Content-Encoding": st.sampled_from(["gzip", "identity", "br", "x"]),
        "Expect": st.sampled_from(["100-continue", "200-ok", ""]),
        "Accept": st.sampled_from(["text/html", "*/*", "application/json"]),
        "Accept-Encoding": st.sampled_from(["gzip", "br", "identity;q=0"]),
    }
    for name in set(draw(st.lists(st.sampled_from(sorted(extras)), max_size=3))):
        value = draw(extras[name]).replace("\r", "").replace("\n", "")
        out.append((name, "".join(c for c in value if c >= " " and c != "\x7f")))
    return out


@st.composite
def json_request(draw: Any, path: str, edit: bool = False) -> bytes:
    body = draw(json_body(edit))
    return request("POST", path, draw(headers("application/json")), body)


def _part(name: bytes, value: bytes, filename: bytes | None = None,
          ctype: bytes | None = None, extra: bytes = b"") -> bytes:
    disp = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disp += b'; filename="' + filename + b'"'
    head = disp + b"\r\n" + (b"Content-Type: " + ctype + b"\r\n" if ctype else b"") + extra
    return head + b"\r\n" + value


@st.composite
def form_body(draw: Any, variation: bool) -> tuple[bytes, bytes]:
    boundary = draw(st.sampled_from([b"XyZ", b"a" * 69, b"a" * 71, b"", b"b\x00c", b"--"]))
    parts = []
    if not variation and draw(st.integers(0, 5)):
        parts.append(_part(b"prompt", draw(st.sampled_from([b"a cat", b"", b"\xff\xfe"]))))
    if draw(st.integers(0, 5)):
        parts.append(_part(b"model", draw(st.sampled_from([m.encode() for m in MODELS]))))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"n", b"size", b"stream", b"response_format", b"\xff\xfe",
                                     b"a\x1fb", b"prompt", b"model", "é".encode()]))
        parts.append(_part(name, draw(st.sampled_from([b"2", b"true", b"url", b"x" * 3000,
                                                       b"1024x1024", b"\xc3("]))))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"image", b"image[]", b"mask", b"other"]))
        data = draw(st.sampled_from([PNG, b"GIF89a" + b"\x00" * 20, b"not an image", b""]))
        ctype = draw(st.sampled_from([b"image/png", b"application/octet-stream", None]))
        parts.append(_part(name, data, b"i.png", ctype,
                           b"X-Pad: " + b"p" * draw(st.sampled_from([0, 9000])) + b"\r\n"))
    many = draw(st.sampled_from([0, 0, 0, 3000]))
    parts += [_part(b"f%d" % i, b"v") for i in range(many)]
    sep = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    body = b"".join(b"--" + boundary + sep + p + sep for p in parts) + b"--" + boundary + b"--"
    if draw(st.integers(0, 6)) == 0:
        body = body[: draw(st.integers(0, len(body)))]  # truncated
    return boundary, body + sep


@st.composite
def form_request(draw: Any, path: str, variation: bool = False) -> bytes:
    boundary, body = draw(form_body(variation))
    ctype = "multipart/form-data; boundary=" + boundary.decode("latin-1")
    return request("POST", path, draw(headers(ctype)), body)


QUERY = st.text(st.sampled_from("abc019=&%?²é#+ \x00"), max_size=40)


@st.composite
def get_request(draw: Any) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        name = draw(st.text(st.sampled_from("Aa0_-.%/é²png"), max_size=70))
        path = f"/v1/images/files/{name}?{draw(QUERY)}"
    elif kind == 1:
        path = f"/v1/models/{draw(st.text(st.sampled_from('ab%é/.-_ '), max_size=80))}"
    elif kind == 2:
        path = draw(st.sampled_from(["/v1/models", "/healthz", "/readyz", "/metrics", "/"]))
    elif kind == 3:
        path = "/" + "a" * draw(st.integers(0, 9000))
    else:
        path = "/v1/images/files/" + "A" * 24 + ".png?expires=" + draw(QUERY) + "&sig=" + draw(
            QUERY)
    path = "".join(c for c in path if c > " " and c != "\x7f" and c != "#") or "/"
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "DELETE", "OPTIONS", "PUT"]))
    return request(method, path, draw(headers(None)))
