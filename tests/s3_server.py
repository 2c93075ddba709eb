"""An S3-compatible server on loopback for the storage tests: moto's server mode on a free port,
or the server named by IMAGEGATE_TEST_S3_ENDPOINT (a MinIO, say) when that is set.

moto answers S3's HTTP API but checks no presigned link (neither its signature nor its
expiry), so the moto server here sits behind PresignCheck: a SigV4 query-string verifier,
written from AWS's specification rather than with botocore, that refuses a link after
X-Amz-Date + X-Amz-Expires (403 AccessDenied, "Request has expired") or with a wrong
signature (403 SignatureDoesNotMatch), as S3 and MinIO do."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from tests.redis_server import free_port

ACCESS_KEY_ID, SECRET_ACCESS_KEY = "imagegate-test-key", "imagegate-test-secret-0123456789"
REGION = "us-east-1"
ENV = "IMAGEGATE_TEST_S3_ENDPOINT"


def _denied(start_response: Callable[..., Any], code: str, message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                     ("Content-Length", str(len(body)))])
    return [body]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_query_signature(secret: str, method: str, raw_path: str, params: list[tuple[str, str]],
                          host: str) -> str:
    """AWS SigV4 for a presigned (query-string) request with an unsigned payload."""
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(params) if k != "X-Amz-Signature")
    values = dict(params)
    canonical = "\n".join([method, raw_path, query, f"host:{host}", "", "host",
                           "UNSIGNED-PAYLOAD"])
    amz_date = values["X-Amz-Date"]
    _, day, region, service, _ = values["X-Amz-Credential"].split("/")
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + secret).encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class PresignCheck:
    """WSGI middleware: presigned requests are verified and expire; others pass to moto."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.checked = 0  # presigned requests seen, so a test knows the check ran

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        raw_path, _, raw_query = raw.partition("?")
        params = parse_qsl(raw_query, keep_blank_values=True)
        values = dict(params)
        if "X-Amz-Signature" not in values:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        self.checked += 1
        if values.get("X-Amz-Credential", "").split("/")[0] != ACCESS_KEY_ID:
            return _denied(start_response, "InvalidAccessKeyId", "Unknown access key.")
        expected = sigv4_query_signature(SECRET_ACCESS_KEY, environ["REQUEST_METHOD"],
                                         raw_path, params, environ.get("HTTP_HOST", ""))
        if not hmac.compare_digest(expected, values["X-Amz-Signature"]):
            return _denied(start_response, "SignatureDoesNotMatch", "The signature is wrong.")
        signed = dt.datetime.strptime(values["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=dt.UTC).timestamp()
        if time.time() > signed + int(values["X-Amz-Expires"]):
            return _denied(start_response, "AccessDenied", "Request has expired")
        return self.app(environ, start_response)  # type: ignore[no-any-return]


class MotoServer:
    """moto's ThreadedMotoServer, with PresignCheck in front; stop() and start() again on the
    same port stand for an outage (moto keeps its buckets in the process meanwhile)."""

    def __init__(self, port: int | None = None) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # its lines carry signed URLs
        self.port = port or free_port()
        self.check: PresignCheck | None = None
        outer = self

        class Checked(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server.werkzeug_app import (
                    DomainDispatcherApplication,
                    create_backend_app,
                )
                from werkzeug.serving import make_server

                outer.check = PresignCheck(DomainDispatcherApplication(create_backend_app))
                self._server = make_server(self._ip_address, self._port, outer.check, True)
                self._server_ready_event.set()
                self._server.serve_forever()

        self.server = Checked(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.running = False

    def start(self) -> None:
        self.server.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False


@dataclass
class S3Target:
    """Where the tests' objects go; `moto` is None for an outside server (not stopped)."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    prefix: str
    moto: MotoServer | None = None
    region: str = REGION
    _client: Any = field(default=None, repr=False)

    def config(self, **options: Any) -> dict[str, Any]:
        """storage.s3 for a gateway config."""
        return {"bucket": self.bucket, "prefix": self.prefix, "region": self.region,
                "endpoint_url": self.endpoint_url, "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key, **options}

    @property
    def client(self) -> Any:
        """A plain botocore client for looking at what the gateway wrote."""
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            self._client = botocore.session.get_session().create_client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                config=Config(retries={"max_attempts": 1}))
        return self._client

    def keys(self, under: str = "") -> list[str]:
        found = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + under)
        return sorted(o["Key"] for o in found.get("Contents", []))


@contextmanager
def s3_target(moto: MotoServer | None = None) -> Iterator[S3Target]:
    """A fresh prefix (and, on moto, a fresh bucket) for one test."""
    prefix = f"t-{secrets.token_hex(4)}/images/"
    endpoint = os.environ.get(ENV)
    if endpoint and moto is None:
        outside = S3Target(endpoint, os.environ.get("IMAGEGATE_TEST_S3_ACCESS_KEY_ID", ""),
                           os.environ.get("IMAGEGATE_TEST_S3_SECRET_ACCESS_KEY", ""),
                           os.environ.get("IMAGEGATE_TEST_S3_BUCKET", "imagegate-test"), prefix)
        try:
            yield outside
        finally:  # the bucket is the user's: only what the test wrote goes
            for key in outside.keys():
                outside.client.delete_object(Bucket=outside.bucket, Key=key)
        return
    own = moto is None
    server = moto or MotoServer()
    if not server.running:
        server.start()
    target = S3Target(f"http://127.0.0.1:{server.port}", ACCESS_KEY_ID, SECRET_ACCESS_KEY,
                      f"imagegate-{secrets.token_hex(4)}", prefix, server)
    target.client.create_bucket(Bucket=target.bucket)
    try:
        yield target
    finally:
        if own:
            server.stop()
