"""The command line: one-line errors with exit codes, usage errors, stdin keys, the supervisor
(one socket, workers replaced, crash loops), and the last log line saying why it stopped."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from imagegate.proxy.cli import main

from imagegate import __version__
from tests.redis_server import free_port
from tests.test_cli_serve import wait_healthy, wait_workers, workers_of


def imagegate(*args: str, stdin: str | None = None, cwd: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagegate", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, capsys: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            assert main(["serve", "--port", str(port), "--workers", workers]) == 1
            out, err = capsys.readouterr()
            assert err == f"imagegate: cannot listen on 127.0.0.1:{port}: address already in use\n"
            assert out == ""


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--port", "70000", "argument --port: port must be 0..65535, not 70000"),
    ("--port", "http", "argument --port: invalid port: 'http'"),
    ("--workers", "0", "argument --workers: workers must be 1 or more, not 0"),
    ("--workers", "-3", "argument --workers: workers must be 1 or more, not -3"),
])
def test_bad_flags_are_usage_errors(flag: str, value: str, message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", flag, value])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert err.startswith("usage: imagegate serve")
    assert err.endswith(f"imagegate serve: error: {message}\n")


def test_version() -> None:
    done = imagegate("--version")  # the real entry point, once
    assert done.returncode == 0 and done.stdout == f"imagegate {__version__}\n"


def test_hash_key_reads_standard_input(monkeypatch: Any, capsys: Any) -> None:
    expected = hashlib.sha256(b"ig-team-a-secret").hexdigest() + "\n"
    for given in ("ig-team-a-secret\n", "ig-team-a-secret", "ig-team-a-secret\r\n"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(given))
        assert main(["hash-key"]) == 0
        assert capsys.readouterr().out == expected
    assert main(["hash-key", "ig-team-a-secret"]) == 0
    assert capsys.readouterr().out == expected
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["hash-key"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == ("imagegate: no key given (pass it as an argument or on "
                                 "standard input)\n")


def start(tmp_path: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    name = tmp_path / f"gateway-{port}-{time.monotonic_ns()}"
    with open(f"{name}.out", "wb") as out, open(f"{name}.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "imagegate", "serve", "--port",
                                 str(port), "--workers", str(workers)], cwd=tmp_path,
                                stdout=out, stderr=err, start_new_session=True)
    proc.log_path = f"{name}.out"  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log_path[:-4] + ".err").read_text()  # type: ignore[attr-defined]


def log_lines(proc: subprocess.Popen[bytes]) -> list[dict]:
    text = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def test_a_second_gateway_on_the_same_port_is_refused(tmp_path: Path) -> None:
    port = free_port()
    first = start(tmp_path, port, 2)
    try:
        wait_workers(port, first, 2)
        second = start(tmp_path, port, 2)
        assert second.wait(timeout=30) == 1
        assert stderr_of(second) == (f"imagegate: cannot listen on 127.0.0.1:{port}: "
                                     "address already in use\n")
        assert first.poll() is None
    finally:
        assert stop(first) == 0
    last = log_lines(first)[-1]
    assert last["event"] == "shutdown" and last["reason"] == "signal SIGTERM"


def test_a_crash_loop_stops_the_gateway_with_exit_1(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port, 2)
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in set(workers_of(proc.pid)) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.02)
        assert proc.wait(timeout=10) == 1
    finally:
        stop(proc)
    assert len(killed) >= 5  # a worker being stopped may be killed once more
    last = log_lines(proc)[-1]
    assert last["event"] == "shutdown" and last["exit_code"] == 1
    assert last["reason"] == "crash loop: 5 worker deaths within 60 s"


def test_a_single_process_gateway_says_why_it_stopped(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port, 1)
    try:
        wait_healthy(port, proc)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    last = log_lines(proc)[-1]
    assert last["event"] == "shutdown" and last["reason"] == "signal SIGINT"
