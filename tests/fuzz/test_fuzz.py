"""Property: whatever a client sends, a well-framed 2xx or OpenAI-shaped 4xx, on a connection
that serves the next request, and JSON-only log lines with no configured secret and no base64.

Seeded, database off. IMAGEGATE_FUZZ=deep runs 2,000 cases per endpoint instead of 300."""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from imagegate.proxy.logs import RateLimiter, configure_logging, unconfigure_logging

from tests.conftest import GATEWAY_KEY, make_config
from tests.fuzz import strategies as s
from tests.harness import GatewayTestServer, start_gateway
from tests.rawhttp import Conn, FramingError, Reply, request
from tests.upstreams import ark as ark_mock
from tests.upstreams import openai as openai_mock

DEEP = os.environ.get("IMAGEGATE_FUZZ") == "deep"
EXAMPLES = 2000 if DEEP else 300
SIGNING_SECRET = "fuzz-signing-secret-0123"
SECRETS = (GATEWAY_KEY, "ig-all-key-secret", openai_mock.API_KEY, ark_mock.API_KEY, SIGNING_SECRET)
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{200,}")
FUZZ = settings(max_examples=EXAMPLES, database=None, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@dataclass
class Target:
    server: GatewayTestServer
    logs: io.BytesIO
    read_at: int = 0
    conn: Conn | None = None
    statuses: dict[int, int] = field(default_factory=dict)

    async def send(self, raw: bytes) -> Reply:
        if self.conn is None:
            assert self.server.port is not None
            self.conn = await Conn.open("127.0.0.1", self.server.port)
        head = raw.startswith(b"HEAD ")
        try:
            reply = await self.conn.exchange(raw, timeout=30, head=head, interim=True)
        except (FramingError, ConnectionError, TimeoutError) as exc:
            await self.drop()
            raise AssertionError(f"no well-framed answer: {exc!r}") from None
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        return reply

    async def drop(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    def new_log_lines(self) -> list[bytes]:
        data = self.logs.getvalue()
        lines, self.read_at = data[self.read_at:], len(data)
        return lines.splitlines()


def check_reply(reply: Reply, head: bool) -> None:
    assert 200 <= reply.status < 500, (reply.status, reply.body[:300])
    for secret in SECRETS[2:]:  # the gateway's own credentials never reach a client
        assert secret.encode() not in reply.body and secret.encode() not in reply.raw_head
    ctype = reply.header("content-type") or ""
    if head and not reply.body:
        return
    if reply.status >= 400:
        assert ctype.startswith("application/json"), (reply.status, ctype, reply.body[:200])
        error = json.loads(reply.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
    elif reply.body and ctype.startswith("application/json"):
        json.loads(reply.body)
    assert reply.header("x-request-id") or reply.status == 400  # aiohttp's own 400s have none


async def check(target: Target, raw: bytes) -> None:
    reply = await target.send(raw)
    try:
        check_reply(reply, head=raw.startswith(b"HEAD "))
    except BaseException:
        await target.drop()  # a failing case must not leave its reply for the next one
        raise
    if reply.closes:
        await target.drop()
    else:  # the connection still serves the next request (no desync, nothing left over)
        follow = await target.send(request("GET", "/healthz", {}))
        assert follow.status == 200 and json.loads(follow.body)["status"] == "ok"
    for line in target.new_log_lines():
        event = json.loads(line)  # one JSON object per line, nothing else
        assert isinstance(event, dict) and "event" in event, line[:200]
        for secret in SECRETS:
            assert secret.encode() not in line, event.get("event")
        assert not BASE64_RUN.search(line), event.get("event")


@pytest.fixture
async def target(aiohttp_server: Any, tmp_path: Any) -> AsyncIterator[Target]:
    openai = await aiohttp_server(openai_mock.make_app(openai_mock.Recorder()))
    ark = await aiohttp_server(ark_mock.make_app(ark_mock.Recorder(api_key=ark_mock.API_KEY)))
    providers = {
        "openai": {"type": "openai", "base_url": str(openai.make_url("")).rstrip("/"),
                   "api_key": openai_mock.API_KEY},
        "ark": {"type": "ark", "base_url": str(ark.make_url("")).rstrip("/"),
                "api_key": ark_mock.API_KEY},
    }
    models = {
        "gpt-image-1": {"routes": [{"provider": "openai"}], "aliases": ["house"]},
        "seedream": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0-250828"}]},
        "fallback": {"routes": [{"provider": "ark", "model": "doubao-seedream-4-0-250828"},
                                {"provider": "openai", "model": "gpt-image-1", "priority": 1}]},
        "not-allowed": {"routes": [{"provider": "openai", "model": "gpt-image-1"}]},
    }
    keys = [{"id": "team-a", "key": GATEWAY_KEY, "models": ["gpt-image-1", "seedream",
                                                          "fallback", "dall-e-2"]},
            {"id": "all", "key": "ig-all-key-secret"}]
    config = make_config({"auth": {"keys": keys},
                          "server": {"max_request_bytes": 2_000_000, "max_connections": 64},
                          "fetch": {"allow_private_hosts": [], "timeout_s": 2},
                          "storage": {"path": str(tmp_path / "img"),
                                      "signing_secret": SIGNING_SECRET}},
                         providers=providers, models={**models, "dall-e-2": models["seedream"]})
    logs = io.BytesIO()
    configure_logging("info", file=logs, cache=False, limiter=RateLimiter(burst=10**9),
                      capture_warnings=False)
    server = await start_gateway(config, header_timeout_s=10, body_timeout_s=10)
    t = Target(server, logs)
    yield t
    await t.drop()
    await server.close()
    unconfigure_logging()
    print("statuses:", dict(sorted(t.statuses.items())))


@FUZZ
@seed(20261201)
@given(raw=s.json_request("/v1/images/generations"))
async def test_generations(target: Target, raw: bytes) -> None:
    await check(target, raw)


@FUZZ
@seed(20261202)
@given(raw=st.one_of(s.json_request("/v1/images/edits", edit=True),
                     s.form_request("/v1/images/edits")))
async def test_edits(target: Target, raw: bytes) -> None:
    await check(target, raw)


@FUZZ
@seed(20261203)
@given(raw=s.form_request("/v1/images/variations", variation=True))
async def test_variations(target: Target, raw: bytes) -> None:
    await check(target, raw)


@FUZZ
@seed(20261204)
@given(raw=s.get_request())
async def test_files_models_and_other_paths(target: Target, raw: bytes) -> None:
    await check(target, raw)
