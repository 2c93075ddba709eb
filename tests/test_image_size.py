"""Image sizes read from headers alone, so a pixel cap holds before Pillow opens anything."""
from __future__ import annotations

import io

import pytest
from imagegate.config.images import image_size, within_pixels
from PIL import Image

from tests.upstreams.hostile import BOMB


@pytest.mark.parametrize(("fmt", "mode", "options"), [
    ("PNG", "RGB", {}), ("JPEG", "RGB", {}), ("JPEG", "RGB", {"progressive": True}),
    ("GIF", "P", {}), ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True}),
    ("WEBP", "RGBA", {}),
])
def test_sizes_come_from_the_header(fmt: str, mode: str, options: dict) -> None:
    out = io.BytesIO()
    Image.new(mode, (37, 23)).save(out, fmt, **options)
    assert image_size(out.getvalue()) == (37, 23)


def test_the_cap_refuses_big_and_unreadable_images() -> None:
    assert image_size(BOMB) == (9600, 9600) and not within_pixels(BOMB)
    assert not within_pixels(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    assert not within_pixels(b"not an image")
