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


def sniff_mime(head: bytes) -> str | None:
    """The real image type from the first bytes (png, jpeg, webp, gif), else None."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
