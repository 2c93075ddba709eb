"""Hosted images for response_format=url: files on disk behind signed, expiring links."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from config.schema import StorageConfig

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}
CONTENT_TYPES = {ext: mime for mime, ext in EXTENSIONS.items()}
NAME = re.compile(r"[A-Za-z0-9_-]{22,64}\.(png|jpeg|webp|gif)")
log = structlog.get_logger("imagegate.storage")


class ImageStore:
    def __init__(self, config: StorageConfig, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(config.path).resolve()
        self.ttl_s = config.ttl_s
        self.secret = (config.signing_secret or secrets.token_hex(32)).encode()
        self.clock = clock

    def _sign(self, name: str, expires: int) -> str:
        msg = f"{name}:{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()[:32]

    def save(self, data: bytes, mime: str) -> tuple[str, str]:
        """Writes the image; returns (name, query string) for the signed link."""
        name = f"{secrets.token_urlsafe(18)}.{EXTENSIONS.get(mime, 'png')}"
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)
        expires = int(self.clock() + self.ttl_s)
        return name, f"expires={expires}&sig={self._sign(name, expires)}"

    def open(self, name: str, expires: str, sig: str) -> tuple[Path, str] | None:
        """The file and its content type for a valid, unexpired link, else None."""
        if not NAME.fullmatch(name) or not expires.isdigit():
            return None
        if not hmac.compare_digest(self._sign(name, int(expires)), sig):
            return None
        if int(expires) < self.clock():
            return None
        path = self.root / name
        if not path.is_file():
            return None
        return path, CONTENT_TYPES[name.rsplit(".", 1)[1]]

    def sweep(self) -> int:
        """Removes files older than the TTL; returns how many."""
        if not self.root.is_dir():
            return 0
        cutoff, removed = self.clock() - self.ttl_s, 0
        for entry in os.scandir(self.root):
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def sweep_forever(self) -> None:
        interval = max(1.0, min(self.ttl_s / 4, 300.0))
        while True:
            await asyncio.sleep(interval)
            removed = await asyncio.to_thread(self.sweep)
            if removed:
                log.info("storage_swept", removed=removed)
