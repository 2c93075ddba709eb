"""Hosted images for response_format=url: signed, expiring links over files, Redis or S3."""
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
from typing import TYPE_CHECKING, Any

import structlog
from imagegate.config.errors import GatewayError
from imagegate.config.schema import StateConfig, StorageConfig
from imagegate.middlewares import redis_state

if TYPE_CHECKING:
    from imagegate.proxy.s3 import S3AnswerBlobs, S3Objects, StoredObject

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}
CONTENT_TYPES = {ext: mime for mime, ext in EXTENSIONS.items()}
NAME = re.compile(r"[A-Za-z0-9_-]{22,64}\.(png|jpeg|webp|gif)")
_DIGITS = re.compile(r"[0-9]{1,12}")
REDIS_PREFIX = "imagegate:image:"
log = structlog.get_logger("imagegate.storage")


class FileBackend:
    def __init__(self, path: str, ttl_s: float, clock: Callable[[], float]) -> None:
        self.root, self.ttl_s, self.clock = Path(path).resolve(), ttl_s, clock

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)

    def get(self, name: str) -> Path | None:
        path = self.root / name  # `name` matched NAME: no separators, no dots but the suffix
        return path if path.is_file() else None

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


class RedisBackend:
    """Images shared by every gateway machine; Redis expires them itself."""

    def __init__(self, state: StateConfig, ttl_s: float) -> None:
        # redis is imported only when configured: it costs ~6 MB and 90 ms
        self.client: Any = redis_state.connect(state, connect_timeout_s=None, timeout_s=None)
        self.errors = redis_state.errors()
        self.ttl_s = ttl_s

    async def put(self, name: str, data: bytes) -> None:
        try:
            await self.client.set(REDIS_PREFIX + name, data, ex=max(1, int(self.ttl_s)))
        except self.errors as exc:
            log.error("storage_unreachable", backend="redis", error=type(exc).__name__)
            raise storage_down() from exc

    async def get(self, name: str) -> bytes | None:
        try:
            data: bytes | None = await self.client.get(REDIS_PREFIX + name)
        except self.errors as exc:
            log.error("storage_unreachable", backend="redis", error=type(exc).__name__)
            raise storage_down() from exc
        return data


def storage_down() -> GatewayError:
    return GatewayError("upstream_unavailable", "Image storage is unavailable.", status=503,
                        headers={"retry-after": "5"}, gateway_fault=True)


def s3_down(exc: Exception, action: str) -> GatewayError:
    """The reason logged is the exception's type and S3's error code: never its text, which
    can carry the endpoint, the key or a signed URL."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    log.error("storage_unreachable", backend="s3", action=action, error=type(exc).__name__,
              code=str(code) if code else None)
    return storage_down()


class ImageStore:
    def __init__(self, config: StorageConfig, clock: Callable[[], float] = time.time,
                 state: StateConfig | None = None) -> None:
        self.ttl_s = config.ttl_s
        self.secret = (config.signing_secret or secrets.token_hex(32)).encode()
        self.clock = clock
        self.files: FileBackend | None = None
        self.redis: RedisBackend | None = None
        self.s3: S3Objects | None = None
        if config.backend == "s3":
            from imagegate.proxy.s3 import S3Objects  # aiobotocore only when configured

            assert config.s3 is not None  # the schema requires it with backend s3
            self.s3 = S3Objects(config.s3, config.ttl_s, clock)
        elif config.backend == "redis":
            self.redis = RedisBackend(state or StateConfig(), config.ttl_s)
        else:
            self.files = FileBackend(config.path, config.ttl_s, clock)

    def _sign(self, name: str, expires: int) -> str:
        msg = f"{name}:{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()[:32]

    async def save(self, data: bytes, mime: str) -> tuple[str, str]:
        """Stores the image; returns (name, query string) of its signed link."""
        name = f"{secrets.token_urlsafe(18)}.{EXTENSIONS.get(mime, 'png')}"
        if self.s3 is not None:
            try:
                await self.s3.put(self.s3.key(name), data, mime, self.ttl_s, "image")
            except self.s3.errors as exc:
                raise s3_down(exc, "put") from exc
        elif self.redis is not None:
            await self.redis.put(name, data)
        else:
            assert self.files is not None
            try:
                await asyncio.to_thread(self.files.put, name, data)
            except OSError as exc:  # full, read-only, permissions: the gateway's, not the client's
                log.error("storage_unwritable", path=str(self.files.root),
                          error=type(exc).__name__, errno=exc.errno)
                raise storage_down() from exc
        expires = int(self.clock() + self.ttl_s)
        return name, f"expires={expires}&sig={self._sign(name, expires)}"

    async def host(self, data: bytes, mime: str, base_url: str) -> str:
        """Stores the image; answers its link: presigned to the bucket, or signed to us."""
        name, query = await self.save(data, mime)
        if self.s3 is not None and self.s3.presign:
            try:
                return await self.s3.presigned(self.s3.key(name))
            except self.s3.errors as exc:  # no credentials from the chain, say
                raise s3_down(exc, "presign") from exc
        return f"{base_url}/v1/images/files/{name}?{query}"

    def answer_blobs(self) -> S3AnswerBlobs | None:
        """Where stored idempotent answers go when the images go to a bucket."""
        if self.s3 is None:
            return None
        from imagegate.proxy.s3 import S3AnswerBlobs

        return S3AnswerBlobs(self.s3)

    def verify(self, name: str, expires: str, sig: str) -> bool:
        # ASCII digits only: str.isdigit() takes '²' and int() then fails
        if not NAME.fullmatch(name) or not _DIGITS.fullmatch(expires) or not sig.isascii():
            return False
        if not hmac.compare_digest(self._sign(name, int(expires)), sig):
            return False
        return int(expires) >= self.clock()

    async def open(self, name: str, expires: str, sig: str
                   ) -> tuple[Path | bytes | StoredObject, str] | None:
        """The image (a path, bytes or a stream from the bucket) and its type for a valid,
        unexpired link, else None."""
        if not self.verify(name, expires, sig):
            return None
        ctype = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        if self.s3 is not None:
            try:
                found = await self.s3.open(self.s3.key(name))
            except self.s3.errors as exc:
                raise s3_down(exc, "get") from exc
            if found is None:
                return None
            found.on_error = lambda exc: s3_down(exc, "stream")
            return found, ctype
        if self.redis is not None:
            data = await self.redis.get(name)
            return (data, ctype) if data is not None else None
        assert self.files is not None
        path = self.files.get(name)
        return (path, ctype) if path is not None else None

    async def start(self) -> None:
        if self.s3 is not None:  # the client at start-up, not on the first request
            try:
                await self.s3.client()
            except self.s3.errors as exc:  # tried again on first use
                s3_down(exc, "connect")

    async def sweep_forever(self) -> None:
        if self.files is None:
            return  # Redis expires keys itself; a bucket's lifecycle rule expires objects
        interval = max(1.0, min(self.ttl_s / 4, 300.0))
        while True:
            await asyncio.sleep(interval)
            removed = await asyncio.to_thread(self.files.sweep)
            if removed:
                log.info("storage_swept", removed=removed)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.client.aclose()
        if self.s3 is not None:
            await self.s3.close()
