"""Hosted images: signed, expiring links; names cannot escape the storage directory."""
from __future__ import annotations

import os
from pathlib import Path

from imagegate.config.schema import StorageConfig
from imagegate.proxy.storage import ImageStore

from tests.harness import Clock


def store(tmp_path: Path, clock: Clock, secret: str = "k") -> ImageStore:
    return ImageStore(StorageConfig(path=str(tmp_path), ttl_s=60, signing_secret=secret), clock)


def query(q: str) -> tuple[str, str]:
    parts = dict(p.split("=") for p in q.split("&"))
    return parts["expires"], parts["sig"]


async def test_signed_link_opens_until_it_expires(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    s = store(tmp_path, clock)
    name, q = await s.save(b"\x89PNG\r\n\x1a\nxx", "image/png")
    expires, sig = query(q)
    found = await s.open(name, expires, sig)
    assert found is not None and found[0].read_bytes().startswith(b"\x89PNG")
    assert found[1] == "image/png"
    clock.now += 61
    assert await s.open(name, expires, sig) is None


async def test_tampered_links_are_refused(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    s = store(tmp_path, clock)
    name, q = await s.save(b"data", "image/jpeg")
    expires, sig = query(q)
    assert await s.open(name, str(int(expires) + 3600), sig) is None  # extended expiry
    assert await s.open(name, expires, "0" * 32) is None
    assert await store(tmp_path, clock, secret="other").open(name, expires, sig) is None


async def test_names_cannot_escape_the_directory(tmp_path: Path) -> None:
    s = store(tmp_path / "images", Clock(1_000_000.0))
    (tmp_path / "secret.png").write_bytes(b"x")
    for name in ("../secret.png", "..%2Fsecret.png", "/etc/passwd", "a.png", ""):
        assert not s.verify(name, "9999999999", s._sign(name, 9999999999))
        assert await s.open(name, "9999999999", s._sign(name, 9999999999)) is None


async def test_sweep_removes_expired_files(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    s = store(tmp_path, clock)
    old, _ = await s.save(b"a", "image/png")
    os.utime(tmp_path / old, (clock.now - 120, clock.now - 120))
    fresh, _ = await s.save(b"b", "image/png")
    os.utime(tmp_path / fresh, (clock.now, clock.now))
    assert s.files is not None and s.files.sweep() == 1
    assert not (tmp_path / old).exists() and (tmp_path / fresh).exists()


def test_link_base_follows_the_served_address() -> None:
    from imagegate.config.loader import parse_config
    from imagegate.proxy.gateway import public_base_url

    def base(server: dict) -> str | None:
        return public_base_url(parse_config({"server": server}, env={}))

    assert base({"host": "10.0.0.5", "port": 8080}) == "http://10.0.0.5:8080"
    assert base({"host": "::1", "port": 9000}) == "http://[::1]:9000"
    assert base({"host": "0.0.0.0", "port": 8080}) is None  # the request's Host decides
    assert base({"public_base_url": "https://img.example.com/"}) == "https://img.example.com"
