"""S3-compatible object storage (aiobotocore): hosted images and stored idempotent answers."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

from imagegate.config.schema import S3Config

CHUNK_BYTES = 256 * 1024  # a streamed object is relayed this much at a time
ANSWERS = "answers/"  # stored answers beside the images, under the same prefix
# their debug records carry request bodies (image bytes), signatures and signed URLs: never
# logged, whatever server.log_level says
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3transfer", "urllib3")


# the values the `imagegate-expire-days` tag takes, one rule each in s3-lifecycle.json
EXPIRE_DAYS = (1, 2, 3, 7, 14, 30, 90, 365)


def expire_days(ttl_s: float) -> str:
    """Lifecycle rules count whole days: an object outlives its links, rounded up to the next
    rung of EXPIRE_DAYS; past the last one it is kept (no rule matches)."""
    days = math.ceil(ttl_s / 86400)
    return next((str(d) for d in EXPIRE_DAYS if d >= days), "keep")


class S3Objects:
    """One aiobotocore client for the process, made at start-up (the import and the client's
    service model cost ~24 MB and 0.4 s, paid only when storage.backend is s3). Raises what
    `errors` names; callers decide what an outage means for them (a 503 for images, an
    unprotected request for answers)."""

    def __init__(self, config: S3Config, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        import aiohttp
        import botocore.exceptions as boto_errors

        self.config, self.ttl_s, self.clock = config, ttl_s, clock
        self.presign = config.presign
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        self.errors: tuple[type[Exception], ...] = (
            boto_errors.BotoCoreError, boto_errors.ClientError, aiohttp.ClientError, OSError,
            TimeoutError)
        self._client_error = boto_errors.ClientError
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._stack.enter_async_context(self._make_client())
        return self._client

    def _make_client(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        c = self.config
        credentials = {}
        if c.access_key_id:  # else the standard chain: environment, files, roles
            credentials = {"aws_access_key_id": c.access_key_id,
                           "aws_secret_access_key": c.secret_access_key}
        config = AioConfig(
            signature_version="s3v4",  # presigned links carry X-Amz-Expires
            connect_timeout=2, read_timeout=10,
            retries={"max_attempts": 2, "mode": "standard"},  # an outage is a 503 quickly
            max_pool_connections=64,
            # S3-compatible stores (older MinIO, GCS) refuse the newer default checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        return get_session().create_client("s3", region_name=c.region,
                                           endpoint_url=c.endpoint_url or None, config=config,
                                           **credentials)

    def key(self, name: str) -> str:
        return self.config.prefix + name

    def answer_key(self, name: str) -> str:
        """Ledger names hold a key id and hash tags: a digest makes them a plain object key."""
        return self.config.prefix + ANSWERS + hashlib.sha256(name.encode()).hexdigest()

    async def put(self, key: str, data: bytes, content_type: str, ttl_s: float,
                  kind: str) -> None:
        """Written once: the type, an Expires and Cache-Control for caches in front, and tags
        a bucket lifecycle rule expires the object by (config/deploy/s3-lifecycle.json)."""
        client = await self.client()
        expires = dt.datetime.fromtimestamp(self.clock() + ttl_s, dt.UTC)
        tags = urlencode({"imagegate-kind": kind, "imagegate-expire-days": expire_days(ttl_s)})
        await client.put_object(Bucket=self.config.bucket, Key=key, Body=data,
                                ContentType=content_type, Expires=expires, Tagging=tags,
                                CacheControl=f"public, max-age={int(ttl_s)}, immutable")

    async def presigned(self, key: str) -> str:
        """A GET link straight to the bucket, valid for the storage TTL (no request made)."""
        client = await self.client()
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.config.bucket, "Key": key},
            ExpiresIn=int(self.ttl_s))
        return url

    async def open(self, key: str) -> StoredObject | None:
        """The object's body as a stream (the caller closes it), or None when there is none."""
        client = await self.client()
        try:
            answer = await client.get_object(Bucket=self.config.bucket, Key=key)
        except self._client_error as exc:
            if _missing(exc):
                return None
            raise
        return StoredObject(answer["Body"], int(answer.get("ContentLength") or 0), self.errors)

    async def read(self, key: str) -> bytes | None:
        found = await self.open(key)
        if found is None:
            return None
        async with found:
            return b"".join([chunk async for chunk in found.chunks()])

    async def delete(self, key: str) -> None:
        client = await self.client()
        await client.delete_object(Bucket=self.config.bucket, Key=key)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


def _missing(exc: Any) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound")


class StoredObject:
    """An object being read from the bucket: relayed in chunks, never held whole."""

    def __init__(self, body: Any, length: int, errors: tuple[type[Exception], ...]) -> None:
        self.body, self.length, self.errors = body, length, errors
        self.on_error: Callable[[Exception], Exception] = lambda exc: exc

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk: bytes = await self.body.read(CHUNK_BYTES)
            except self.errors as exc:  # the bucket failed half-way
                raise self.on_error(exc) from exc
            if not chunk:
                return
            yield chunk

    async def __aenter__(self) -> StoredObject:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.body.close()


class S3AnswerBlobs:
    """middlewares.ledger.AnswerBlobs on the bucket: stored answers beside the images."""

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects
        self.errors = objects.errors

    async def put(self, name: str, data: bytes, ttl_s: float) -> None:
        await self.objects.put(self.objects.answer_key(name), data, "application/msgpack",
                               ttl_s, "answer")

    async def get(self, name: str) -> bytes | None:
        return await self.objects.read(self.objects.answer_key(name))

    async def delete(self, name: str) -> None:
        await self.objects.delete(self.objects.answer_key(name))
