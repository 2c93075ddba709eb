"""Every logger as one JSON line: aiohttp's and asyncio's too, repeats limited, no secrets."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from imagegate.middlewares.redact import register
from imagegate.proxy.logs import RateLimiter, configure_logging, unconfigure_logging

from tests.harness import Clock


@pytest.fixture
def lines() -> Iterator[Any]:
    out, clock = io.BytesIO(), Clock()
    configure_logging("info", file=out, cache=False, limiter=RateLimiter(5, 10.0, clock),
                      capture_warnings=False)

    def read() -> list[dict[str, Any]]:
        raw = out.getvalue().decode().splitlines()
        return [json.loads(line) for line in raw]  # each line is one JSON object

    read.clock = clock  # type: ignore[attr-defined]
    yield read
    unconfigure_logging()


def test_library_tracebacks_are_one_json_line(lines: Any) -> None:
    try:
        raise ValueError("Forbidden control character in 'Bearer sk-client\x01key'")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "1.2.3.4")
    logging.getLogger("asyncio").error("socket.accept() out of system resource")
    got = lines()
    assert [(e["logger"], e["level"], e.get("error")) for e in got] == [
        ("aiohttp.server", "error", "ValueError"), ("asyncio", "error", None)]
    assert "sk-client" not in json.dumps(got)  # the exception's text (client bytes) is not kept


def test_repeated_lines_are_rate_limited_with_a_count(lines: Any) -> None:
    log = structlog.get_logger("t")
    for _ in range(50):
        log.warning("flood")
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
    log.info("request")  # access lines are never limited
    assert [e["event"] for e in lines()].count("flood") == 5
    assert [e["event"] for e in lines()].count("library_log") == 5
    lines.clock.now = 11.0
    log.warning("flood")
    assert lines()[-1]["suppressed"] == 45


def test_configured_secrets_and_base64_never_reach_a_line(lines: Any) -> None:
    register({"sk-configured-secret-42"})
    log = structlog.get_logger("t")
    log.info("x", detail="echoed sk-configured-secret-42 back", blob="QUJD" * 100)
    text = json.dumps(lines())
    assert "sk-configured-secret-42" not in text and "QUJDQUJD" not in text
    assert "[redacted]" in text


@pytest.fixture
def own_secrets() -> Iterator[None]:
    """The process-wide secret set as it was, after a test that registers many."""
    from imagegate.middlewares import redact
    saved = (set(redact._registered), redact._pattern, redact._line_pattern, redact._line_forms)
    yield
    redact._registered.clear()
    redact._registered.update(saved[0])
    redact._pattern, redact._line_pattern, redact._line_forms = saved[1:]


@pytest.mark.parametrize("count", [1, 40])  # a few: substring searches; many: one pattern
def test_every_configured_secret_is_masked_however_many_there_are(
        lines: Any, own_secrets: None, count: int) -> None:
    secrets = [f"sk-many-{i:03d}-secret" for i in range(count)]
    register(secrets)
    log = structlog.get_logger("t")
    for secret in secrets:
        log.info("x", detail=f"quoted '{secret}' and \"{secret}\"")
    text = json.dumps(lines())
    assert not any(secret in text for secret in secrets)
    assert text.count("[redacted]") == 2 * count


def test_the_base64_run_test_finds_exactly_the_runs_the_pattern_finds() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from imagegate.proxy.logs import _BASE64_RUN_BYTES, _RUN, _RUN_TABLE

    runs = st.integers(100, 140).map(lambda n: (b"A+/9" * n)[:n])  # around the 120 bound
    pieces = st.one_of(st.binary(max_size=40), runs, st.sampled_from([b'"', b" ", b":", b"\x00"]))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(pieces, max_size=12).map(b"".join))
    def same(line: bytes) -> None:
        assert (_RUN in line.translate(_RUN_TABLE)) == (_BASE64_RUN_BYTES.search(line) is not None)

    same()


class _Writes(io.BytesIO):
    """A stdout that keeps each write apart, as a pipe's reader would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


@pytest.fixture
def writes() -> Iterator[_Writes]:
    out = _Writes()
    configure_logging("info", file=out, cache=False, capture_warnings=False)
    yield out
    unconfigure_logging()


async def test_info_lines_of_one_loop_turn_share_one_write_of_whole_lines(
        writes: _Writes) -> None:
    import asyncio
    log = structlog.get_logger("t")
    for i in range(60):  # ~115 bytes each: 60 lines are more than one PIPE_BUF
        log.info("request", n=i, pad="x" * 20)
    before = len(writes.getvalue().splitlines())
    assert before < 60  # the last lines wait for the turn's end
    await asyncio.sleep(0)
    assert 2 <= len(writes.writes) <= 3  # 60 lines in two writes, not sixty
    for chunk in writes.writes:  # each write ends at a line's end, none over PIPE_BUF
        assert chunk.endswith(b"\n") and len(chunk) <= 4096
    assert [json.loads(line)["n"] for line in writes.getvalue().splitlines()] == list(range(60))


async def test_a_warning_is_written_at_once_after_the_lines_before_it(writes: _Writes) -> None:
    log = structlog.get_logger("t")
    log.info("request", n=1)
    log.warning("upstream_broke_mid_answer")
    assert [json.loads(line)["event"] for line in writes.getvalue().splitlines()] == [
        "request", "upstream_broke_mid_answer"]


def test_a_line_with_no_loop_or_from_another_thread_is_written_at_once(
        writes: _Writes) -> None:
    import threading
    log = structlog.get_logger("t")
    log.info("started")
    assert json.loads(writes.getvalue())["event"] == "started"
    thread = threading.Thread(target=lambda: log.info("from_a_thread"))
    thread.start()
    thread.join()
    assert json.loads(writes.getvalue().splitlines()[-1])["event"] == "from_a_thread"


def test_info_line_writes_what_structlog_writes_and_yields_to_capture_logs(
        lines: Any) -> None:
    from imagegate.proxy.logs import info_line
    from structlog.testing import capture_logs

    register({"sk-configured-secret-42"})
    fields = {"provider": "openai", "status": 200, "detail": "sk-configured-secret-42",
              "blob": "QUJD" * 100}
    structlog.get_logger("t").info("upstream", **fields)
    info_line("upstream", dict(fields))
    with capture_logs() as captured:  # structlog reconfigured elsewhere: the line goes there
        info_line("upstream", {"status": 201})
    info_line("upstream", {"status": 202})
    got = lines()
    for line in got:
        line.pop("timestamp")
    assert got[0] == got[1] and got[0]["detail"] == "[redacted]" and "QUJD" not in str(got[0])
    assert [e["status"] for e in got] == [200, 200, 202]
    assert captured == [{"status": 201, "event": "upstream", "log_level": "info"}]


async def test_request_lines_are_rendered_at_the_turns_end_as_of_their_call(
        writes: _Writes) -> None:
    """A request's lines go out after the answer its turn wrote, yet each says what it said when
    it was written: its request id, its time, its fields; one that cannot be rendered is
    replaced by a line saying so, and the rest of its turn still goes out, in order."""
    import asyncio
    import contextvars
    import time
    from datetime import UTC, datetime

    from imagegate.middlewares.keys import REQUEST_ID_VAR
    from imagegate.proxy.logs import info_line

    def request(request_id: str, status: int) -> None:  # in a context of its own, as a task
        REQUEST_ID_VAR.set(request_id)
        info_line("request", {"status": status})

    before = time.time()
    contextvars.copy_context().run(request, "req_one", 200)
    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("no text for this")

    info_line("upstream", {"status": 500, "detail": Unprintable()})
    contextvars.copy_context().run(request, "req_two", 201)
    after = time.time()
    assert writes.getvalue() == b""  # nothing rendered or written before the turn's end
    await asyncio.sleep(0.05)
    got = [json.loads(line) for line in writes.getvalue().splitlines()]
    assert [(e["event"], e.get("request_id"), e.get("status")) for e in got] == [
        ("request", "req_one", 200), ("log_line_unrenderable", None, None),
        ("request", "req_two", 201)]
    assert got[1]["error"] == "ValueError" and got[1]["level"] == "error"
    for line in got:
        stamp = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
        stamp = stamp.replace(tzinfo=UTC).timestamp()
        assert before - 0.001 <= stamp <= after + 0.001  # the call's time, not the flush's
    assert len(writes.writes) == 1


async def test_many_request_lines_go_out_in_whole_lines_of_at_most_pipe_buf(
        writes: _Writes) -> None:
    import asyncio

    from imagegate.proxy.logs import info_line
    for i in range(150):  # more than one turn may hold: written in bounded batches
        info_line("request", {"n": i, "pad": "x" * 40})
    await asyncio.sleep(0)
    assert len(writes.writes) >= 4
    for chunk in writes.writes:
        assert chunk.endswith(b"\n") and len(chunk) <= 4096
    assert [json.loads(line)["n"] for line in writes.getvalue().splitlines()] == list(range(150))


def test_info_line_keeps_to_the_configured_level() -> None:
    from imagegate.proxy.logs import info_line
    out = io.BytesIO()
    configure_logging("warning", file=out, cache=False, capture_warnings=False)
    try:
        info_line("request", {"status": 200})
        structlog.get_logger("t").warning("flood")
        assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["flood"]
    finally:
        unconfigure_logging()


def test_lines_left_by_a_stopped_loop_go_out_with_the_next_line(writes: _Writes) -> None:
    import asyncio
    log = structlog.get_logger("t")

    async def last_words() -> None:
        log.info("request", n=1)  # its turn's flush never runs: the loop stops first
        asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    loop.create_task(last_words())
    loop.run_forever()
    loop.close()
    log.info("shutdown")  # no loop now: written at once, after what was pending
    assert [json.loads(line)["event"] for line in writes.getvalue().splitlines()] == [
        "request", "shutdown"]


def test_timestamps_read_as_structlogs_iso_utc_ones() -> None:
    from datetime import datetime

    from imagegate.proxy.logs import iso_timestamp
    from structlog.processors import TimeStamper

    stamp = TimeStamper(fmt="iso", utc=True)
    for _ in range(200):
        ours = iso_timestamp(None, "info", {})["timestamp"]
        theirs = stamp(None, "info", {})["timestamp"]
        assert len(ours) == len(theirs) == len("2026-12-01T08:45:51.123456Z")
        assert ours.endswith("Z") and ours[19] == "."
        moment = datetime.strptime(ours, "%Y-%m-%dT%H:%M:%S.%fZ")
        later = datetime.strptime(theirs, "%Y-%m-%dT%H:%M:%S.%fZ")
        assert 0 <= (later - moment).total_seconds() < 0.5  # the same clock, read just after
