"""Image bytes as the gateway sees them: real types sniffed from the first bytes, input images."""
from __future__ import annotations

from typing import Final

import msgspec

IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/webp")  # what edits may send


class InputImage(msgspec.Struct, frozen=True):
    """An input image of an edit, already read and sniffed (`mime` is the real type)."""

    data: bytes
    mime: str
    filename: str = "image"


_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


MAX_DECODE_PIXELS: Final = 32 * 1024 * 1024  # what the gateway lets Pillow decode (~128 MB RGBA)
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height read from the header (PNG, GIF, WebP, JPEG), nothing decoded: a pixel
    cap checked before Pillow opens the bytes (Pillow's own check warns, then decodes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (1 + int.from_bytes(data[24:27], "little"),
                1 + int.from_bytes(data[27:30], "little"))
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in _JPEG_SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7],
                                                                              "big")
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def within_pixels(data: bytes, limit: int = MAX_DECODE_PIXELS) -> bool:
    """True when the header names a size Pillow may decode; False when too large or unread."""
    size = image_size(data)
    return size is not None and 0 < size[0] * size[1] <= limit


def sniff_mime(head: bytes) -> str | None:
    """The real image type from the first bytes (png, jpeg, webp, gif), else None."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
