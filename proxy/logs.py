"""Logging: every logger (ours, aiohttp's, asyncio's) as one JSON line, repeats rate-limited."""
from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, BinaryIO

import msgspec
import structlog
from imagegate.middlewares.keys import REQUEST_ID_VAR
from imagegate.middlewares.redact import scrub_line

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
MAX_LIBRARY_MESSAGE_CHARS = 300
MAX_EXCEPTION_CHARS = 8000
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=_-]{120,}")


WARNING_OR_WORSE = frozenset(("warning", "error", "critical", "exception"))


class RateLimiter:
    """At most `burst` warning-or-worse lines per event name and window; the next line after a
    window that dropped some says how many (`suppressed`). Access lines are never limited."""

    def __init__(self, burst: int = 20, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [start, count, dropped]

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        if method not in WARNING_OR_WORSE:
            return event
        key = (str(event.get("event")), str(event.get("logger", "")))
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.window_s:
            dropped = int(window[2]) if window is not None else 0
            self._windows[key] = [now, 1, 0]
            if len(self._windows) > 1000:  # bounded whatever the events are
                self._windows = {key: self._windows[key]}
            if dropped:
                event["suppressed"] = dropped
            return event
        window[1] += 1
        if window[1] > self.burst:
            window[2] += 1
            raise structlog.DropEvent
        return event


class _Second:
    """The ISO text of the current UTC second (with its "."), made once a second, not once a
    line; the microseconds from two 3-digit tables (formatting an int costs about twice)."""

    second = -1
    text = ""
    digits = tuple(f"{i:03d}" for i in range(1000))


def iso_timestamp(logger: Any, method: str, event: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """`timestamp` as structlog's TimeStamper(fmt="iso", utc=True) writes it
    (2026-12-01T08:45:51.123456Z), for a fraction of its cost."""
    event["timestamp"] = iso_text(time.time())
    return event


def iso_text(now: float) -> str:
    """The ISO UTC text of a time.time() reading."""
    second = int(now)
    if second != _Second.second:
        _Second.text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _Second.second = second
    micros = int((now - second) * 1e6)  # 0..999999: the float's fraction, truncated
    digits = _Second.digits
    return _Second.text + digits[micros // 1000] + digits[micros % 1000] + "Z"


MAX_LINE_BYTES = 16 * 1024  # a line longer than this has its long fields cut, then re-rendered
_BASE64_RUN_BYTES = re.compile(rb"[A-Za-z0-9+/=_-]{120,}")
# the test for a run before any pattern: each base64 byte made "a", any other a space, and one
# search for 120 "a"s (sre's pattern search counted its way from every byte: ~6x the cost)
_RUN_TABLE = bytes(0x61 if re.fullmatch(rb"[A-Za-z0-9+/=_-]", bytes([i])) else 0x20
                   for i in range(256))
_RUN = b"a" * 120


def render_line(event: MutableMapping[str, Any], default: Any) -> bytes:
    """The JSON line of an event, with no configured secret, no base64 run (an image, a data URL,
    a key) and no unbounded field in it. A normal line costs one encode and two searches over
    the rendered bytes (a run cannot span two fields: quotes, colons and commas end it); only a
    long line takes the per-field path."""
    line = msgspec.json.encode(event, enc_hook=default)
    if len(line) > MAX_LINE_BYTES:
        line = msgspec.json.encode(_bound_strings(None, "", dict(event)), enc_hook=default)
    line = scrub_line(line)
    if len(line) >= 120 and line.translate(_RUN_TABLE).find(_RUN) >= 0:  # find: see scrub_line
        line = _BASE64_RUN_BYTES.sub(b"[redacted]", line)
    return line


def _bound_strings(logger: Any, method: str, event: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """No base64 run (an image, a data URL, a key) in any line, and tracebacks bounded."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) >= 120:
            value = _BASE64_RUN.sub("[redacted]", value)
            event[key] = value[:MAX_EXCEPTION_CHARS]
    return event


def _exc_info(logger: Any, method: str, event: MutableMapping[str, Any]
              ) -> MutableMapping[str, Any]:
    """structlog's format_exc_info, skipped on the lines (nearly all) that carry none."""
    if "exc_info" not in event:
        return event
    return structlog.processors.format_exc_info(logger, method, event)


class _ToStructlog(logging.Handler):
    """The stdlib bridge: aiohttp's and asyncio's records as our JSON lines. Their messages can
    quote a client's bytes: bounded, and tracebacks kept to the exception's type."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not take the logger down
            message = str(record.msg)
        fields: dict[str, Any] = {"logger": record.name,
                                  "message": message[:MAX_LIBRARY_MESSAGE_CHARS]}
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = record.exc_info[0].__name__
        logger = structlog.get_logger(record.name)
        level = record.levelname.lower()
        getattr(logger, level if level in LEVELS or level == "critical" else "info")(
            "library_log", **fields)


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level


def _prepare(limiter: RateLimiter) -> Callable[[Any, str, MutableMapping[str, Any]],
                                              MutableMapping[str, Any]]:
    """One processor for what every line needs: what structlog's merge_contextvars,
    add_log_level, the rate limiter, the timestamp and format_exc_info did, in that order, for
    one call instead of five."""
    def prepare(logger: Any, method: str, event: MutableMapping[str, Any]
                ) -> MutableMapping[str, Any]:
        request_id = REQUEST_ID_VAR.get()
        if request_id is not None:
            event.setdefault("request_id", request_id)
        event["level"] = _LEVEL_NAMES.get(method, method)
        if method in WARNING_OR_WORSE:  # the limiter's own test, saving info lines a call
            event = limiter(logger, method, event)
        event = iso_timestamp(logger, method, event)
        return _exc_info(logger, method, event) if "exc_info" in event else event

    return prepare


LINES_PER_WRITE_BYTES = 4096  # PIPE_BUF: a write this size to a pipe is never interleaved
MAX_PENDING_LINES = 64  # lines kept for a turn's end before they are written anyway

Later = tuple[dict[str, Any], float]  # an info line's fields (event, request id) and its time


class LineWriter:
    """structlog's BytesLogger, with the info lines of one event-loop turn written together:
    one write and one flush per turn instead of two per request. A line given `later` (the
    lines every request writes) is also rendered then, at the turn's end: after the answer
    that turn finished has been written to its client, so a request's own lines cost it no
    latency. Every write ends at a line's end and holds at most PIPE_BUF bytes (or one longer
    line), so workers sharing a pipe never interleave inside a line. A warning or worse, a line
    off the loop's thread and a line with no loop running are written at once (after the
    pending ones: the order holds), and whatever is pending is written at exit."""

    def __init__(self, file: BinaryIO | None = None,
                 render: Callable[[dict[str, Any], float], bytes] | None = None) -> None:
        self._file = file if file is not None else sys.stdout.buffer
        self._render = render if render is not None else _render_later
        self._pending: list[bytes | Later] = []
        self._thread = threading.get_ident()
        self._flusher: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on

    def info(self, message: bytes) -> None:
        self._add(message)

    def later(self, fields: dict[str, Any], now: float) -> None:
        """An info line rendered at the turn's end, stamped `now`: its fields must not change
        after this call (every caller hands over a dict of its own)."""
        self._add((fields, now))

    def _add(self, line: bytes | Later) -> None:
        if threading.get_ident() != self._thread:
            self.now(line if type(line) is bytes else self._render(*line))
            return
        if len(self._pending) >= MAX_PENDING_LINES:
            self.flush()
        pending = self._pending
        pending.append(line)
        flusher = self._flusher
        if len(pending) > 1 and flusher is not None and flusher.is_running():
            return  # the turn's flush is scheduled (get_running_loop costs a getpid call)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (start-up, shut-down, the CLI): now, with any left over
            self.flush()
            return
        self._flusher = loop
        loop.call_soon(self.flush)

    def now(self, message: bytes) -> None:
        if self._pending and threading.get_ident() == self._thread:
            self.flush()
        self._file.write(message + b"\n")
        self._file.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        render = self._render
        lines = [line if type(line) is bytes else render(*line) for line in pending]
        lines.append(b"")  # the last line's newline
        if sum(map(len, lines)) + len(lines) - 1 <= LINES_PER_WRITE_BYTES:
            self._file.write(b"\n".join(lines))
        else:  # more than one PIPE_BUF: whole lines, in writes of at most that
            start, size = 0, 0
            for i, line in enumerate(lines[:-1]):
                if size + len(line) + 1 > LINES_PER_WRITE_BYTES and i > start:
                    self._file.write(b"\n".join([*lines[start:i], b""]))
                    start, size = i, 0
                size += len(line) + 1
            self._file.write(b"\n".join(lines[start:]))
        self._file.flush()

    debug = msg = info
    warning = warn = error = err = critical = fatal = failure = exception = now


Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]


class _Current:
    writer: LineWriter | None = None
    chain: list[Processor] = []  # the configured processors (a copy of structlog's list)
    prepare: Processor = staticmethod(lambda logger, method, event: event)  # chain[0]
    default: Callable[[Any], Any] = staticmethod(repr)  # the renderer's fallback encoder
    info_on = False


# structlog's live configuration: info_line writes directly only while its processors are still
# ours (a structlog.configure elsewhere, or testing.capture_logs, which swaps the list's items,
# takes the lines back). Without this internal, every line goes through structlog.
_STRUCTLOG_CONFIG: Any = getattr(getattr(structlog, "_config", None), "_CONFIG", None)


def info_line(event: str, fields: dict[str, Any]) -> None:
    """An info line written exactly as structlog's chain writes `log.info(event, **fields)`
    (same processors, fields and order), for the lines every request writes (its access line,
    each upstream attempt): structlog's lazy logger, binding and copying per call cost more
    than rendering the line. Rendered at the loop turn's end (LineWriter.later), with the
    request id and the time of this call. Before configure_logging (or after a reset),
    structlog as is."""
    writer = _Current.writer
    if writer is None or _STRUCTLOG_CONFIG is None \
            or _STRUCTLOG_CONFIG.default_processors != _Current.chain:
        structlog.get_logger().info(event, **fields)
        return
    if not _Current.info_on:
        return
    fields["event"] = event
    request_id = REQUEST_ID_VAR.get()  # the caller's: the line is rendered outside its context
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    writer.later(fields, time.time())


def _render_later(fields: dict[str, Any], now: float) -> bytes:
    """What the chain [prepare, JSONRenderer(serializer=render_line)] makes of an info line,
    its request id and time taken when it was written: prepare's level and timestamp, and the
    renderer's serializer (with structlog's fallback encoder). A line that cannot be rendered
    says so, rather than taking its turn's other lines with it."""
    fields["level"] = "info"
    fields["timestamp"] = iso_text(now)
    try:
        if "exc_info" in fields:
            fields = dict(_exc_info(None, "info", fields))
        return render_line(fields, _Current.default)
    except Exception as exc:  # noqa: BLE001 (a log line, never the request's failure)
        return render_line({"event": "log_line_unrenderable", "error": type(exc).__name__,
                            "level": "error", "timestamp": fields["timestamp"]}, repr)


@atexit.register
def _flush_at_exit() -> None:
    if _Current.writer is not None:
        _Current.writer.flush()


def _writer_factory(file: BinaryIO | None) -> Callable[..., LineWriter]:
    if _Current.writer is not None:  # a reconfiguration: the old writer's lines first
        _Current.writer.flush()
    writer = _Current.writer = LineWriter(file)
    return lambda *args: writer


def configure_logging(level: str = "info", *, file: BinaryIO | None = None,
                      cache: bool = True, limiter: RateLimiter | None = None,
                      capture_warnings: bool = True) -> None:
    """structlog once per process: JSON lines (bytes all the way), and the stdlib's loggers
    sent through it."""
    chain: list[Processor] = [_prepare(limiter or RateLimiter()),
                              structlog.processors.JSONRenderer(serializer=render_line)]
    structlog.configure(
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=_writer_factory(file),
        cache_logger_on_first_use=cache,
    )
    _Current.chain = list(chain)  # structlog's own list may be changed in place
    _Current.prepare = chain[0]
    _Current.default = getattr(chain[1], "_dumps_kw", {}).get("default", repr)
    _Current.info_on = LEVELS[level] <= logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(LEVELS[level])
    logging.captureWarnings(capture_warnings)


def unconfigure_logging() -> None:
    """Tests: back to structlog's defaults, the stdlib bridge removed."""
    if _Current.writer is not None:
        _Current.writer.flush()
        _Current.writer = None
    _Current.chain, _Current.info_on = [], False
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    logging.captureWarnings(False)
