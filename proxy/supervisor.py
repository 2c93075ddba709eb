"""`serve --workers N`: the supervisor owns the listening socket and hands it to its workers,
replaces a worker that dies (with backoff), and gives up on a crash loop."""
from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

CRASH_LOOP_DEATHS = 5  # this many worker deaths ...
CRASH_LOOP_WINDOW_S = 60.0  # ... within this many seconds stop the gateway with exit 1
BACKOFF_BASE_S = 0.1  # a replacement waits base * 2**(recent deaths - 1), at most BACKOFF_MAX_S
BACKOFF_MAX_S = 5.0
STOP_GRACE_S = 5.0  # after graceful_shutdown_s, workers still running are killed


class ListenError(Exception):
    """The address cannot be listened on; the message is the CLI's one line."""


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here once: no SO_REUSEPORT, so a second gateway on the same
    port is refused instead of silently sharing it."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: "
                          f"{(exc.strerror or 'unknown host').lower()}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not a listener
        if family == socket.AF_INET6 and host in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (
            (exc.strerror or type(exc).__name__).lower())
        raise ListenError(f"cannot listen on {where}: {why}") from None
    sock.set_inheritable(True)
    return sock


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class Supervisor:
    """Keeps `count` workers running `target(*args)`; stops on SIGTERM/SIGINT or a crash loop."""

    def __init__(self, target: Callable[..., Any], args: tuple[Any, ...], count: int,
                 log: Any, *, grace_s: float, clock: Callable[[], float] = time.monotonic,
                 on_death: Callable[[int], None] = lambda pid: None) -> None:
        self.target, self.args, self.count, self.log = target, args, count, log
        self.grace_s, self.clock, self.on_death = grace_s, clock, on_death
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[Any] = []
        self.deaths: deque[float] = deque()
        self.pending: list[float] = []  # when each replacement is due
        self.reason: str | None = None  # why the gateway stops, once it does
        self.failed = False

    def start_one(self) -> None:
        worker = self.ctx.Process(target=self.target, args=self.args, daemon=False)
        worker.start()
        self.workers.append(worker)

    def stop(self, signum: int, frame: Any = None) -> None:
        if self.reason is None:
            self.reason = f"signal {signal_name(signum)}"
        for w in self.workers:  # each worker drains and stops on SIGTERM
            if w.is_alive():
                w.terminate()

    def signal_workers(self, signum: int) -> None:
        for w in self.workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signum)

    def died(self, worker: Any) -> None:
        """One worker ended on its own: replace it after a backoff, or stop on a crash loop."""
        self.workers.remove(worker)
        self.on_death(worker.pid)
        now = self.clock()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - CRASH_LOOP_WINDOW_S:
            self.deaths.popleft()
        recent = len(self.deaths)
        self.log.error("worker_died", pid=worker.pid, exitcode=worker.exitcode,
                       deaths_in_window=recent)
        if recent >= CRASH_LOOP_DEATHS:
            self.failed = True
            self.reason = (f"crash loop: {recent} worker deaths within "
                           f"{CRASH_LOOP_WINDOW_S:g} s")
            self.stop(signal.SIGTERM)
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (recent - 1))
        self.pending.append(now + delay)
        self.log.warning("worker_restarting", after_s=delay)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for _ in range(self.count):
            self.start_one()
        stopping_since: float | None = None
        while self.workers or (self.pending and self.reason is None):
            for w in list(self.workers):
                if not w.is_alive():  # is_alive() reaps
                    if self.reason is None:
                        self.died(w)
                    else:
                        self.workers.remove(w)
                        self.on_death(w.pid)
            now = self.clock()
            if self.reason is None:
                for due in [d for d in self.pending if d <= now]:
                    self.pending.remove(due)
                    self.start_one()
                    self.log.info("worker_restarted", pid=self.workers[-1].pid)
            else:
                self.pending.clear()
                stopping_since = stopping_since or now
                if now - stopping_since > self.grace_s + STOP_GRACE_S:
                    for w in self.workers:
                        if w.is_alive():
                            w.kill()
            waits = [d - now for d in self.pending] + [1.0]
            sentinels = [w.sentinel for w in self.workers]
            if sentinels:
                multiprocessing.connection.wait(sentinels, timeout=max(0.01, min(waits)))
            elif self.pending:
                time.sleep(max(0.01, min(waits)))
        for w in self.workers:
            w.join()
        return 1 if self.failed else 0
