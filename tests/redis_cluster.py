"""A real Redis Cluster (and a Sentinel-watched pair) on free loopback ports, each server a child
process stopped by its PID."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.redis_server import free_port

NODE_TIMEOUT_MS = 1000  # how long a silent primary has before its replica takes over


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and exists too."""
    while True:
        port = random.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (.ci/run installs redis-server with apt)")
    return found


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError, LookupError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class Servers:
    """redis-server children by port."""

    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, workdir: Path, port: int, *args: str) -> None:
        self.procs[port] = subprocess.Popen(
            [_binary("redis-server"), *args, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: admin(port).ping(), f"redis-server on {port}")

    def kill(self, port: int) -> None:
        """SIGKILL by PID: a crash, not a shutdown."""
        proc = self.procs[port]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def admin(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


class Cluster:
    def __init__(self, servers: Servers, ports: list[int]) -> None:
        self.servers, self.ports = servers, ports
        self.url = f"redis://127.0.0.1:{ports[0]}/0"

    def alive(self) -> list[int]:
        return [p for p in self.ports if self.servers.procs[p].poll() is None]

    def primaries(self) -> list[int]:
        return [p for p in self.alive() if admin(p).execute_command("ROLE")[0] == b"master"]

    def owner(self, key: str) -> int:
        """The port of the primary serving `key`'s slot, as the live nodes see it."""
        slot = int(admin(self.alive()[0]).execute_command("CLUSTER", "KEYSLOT", key))
        for port in self.primaries():
            for start, end, *_ in admin(port).execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and _[0][1] == port:
                    return port
        raise LookupError(key)

    def is_ok(self) -> bool:
        return all(b"cluster_state:ok" in admin(p).execute_command("CLUSTER", "INFO")
                   for p in self.alive())

    def flushall(self) -> None:
        for port in self.primaries():
            admin(port).flushall()

    def calls(self, command: str) -> int:
        """How many times `command` ran on the primaries (INFO commandstats)."""
        total = 0
        for port in self.primaries():
            stats = admin(port).info("commandstats")
            total += int(stats.get(f"cmdstat_{command.lower()}", {}).get("calls", 0))
        return total


@contextmanager
def redis_cluster(workdir: Path, replicas: int = 0) -> Iterator[Cluster]:
    """3 primaries (and `replicas` replicas each), every slot covered, cluster_state:ok."""
    servers = Servers()
    ports: list[int] = []
    while len(ports) < 3 * (1 + replicas):
        port = cluster_port()
        if port not in ports:
            ports.append(port)
    try:
        for port in ports:
            node_dir = workdir / f"node-{port}"
            node_dir.mkdir(parents=True, exist_ok=True)
            servers.start(node_dir, port, "--cluster-enabled", "yes", "--cluster-config-file",
                          f"nodes-{port}.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                          "--cluster-replica-validity-factor", "0",
                          "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", str(replicas),
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        cluster = Cluster(servers, ports)
        wait_for(cluster.is_ok, "cluster_state:ok on every node")
        if replicas:
            wait_for(lambda: all(admin(p).info("replication").get("master_link_status") == "up"
                                 for p in ports if p not in cluster.primaries()),
                     "replicas in sync")
        yield cluster
    finally:
        servers.stop_all()


class SentinelPair:
    """One primary, one replica, one sentinel watching them as `service`."""

    service = "imagegate"

    def __init__(self, servers: Servers, primary: int, replica: int, sentinel: int) -> None:
        self.servers, self.sentinel = servers, sentinel
        self.ports = (primary, replica)

    def primary(self) -> int:
        host, port = admin(self.sentinel).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def failover(self) -> int:
        """SENTINEL FAILOVER; returns the new primary's port once it serves as primary."""
        old = self.primary()
        admin(self.sentinel).execute_command("SENTINEL", "FAILOVER", self.service)
        new = next(p for p in self.ports if p != old)
        wait_for(lambda: self.primary() == new
                 and admin(new).execute_command("ROLE")[0] == b"master", "the promotion")
        return new


@contextmanager
def sentinel_pair(workdir: Path) -> Iterator[SentinelPair]:
    servers = Servers()
    primary, replica, sentinel = free_port(), free_port(), free_port()
    with ExitStack() as stack:
        stack.callback(servers.stop_all)
        servers.start(workdir, primary, "--repl-diskless-sync-delay", "0")
        servers.start(workdir, replica, "--replicaof", "127.0.0.1", str(primary))
        # in sync before the sentinel first looks: it looks at a replica again only every 10 s,
        # and will not promote one it saw out of sync
        wait_for(lambda: admin(replica).info("replication").get("master_link_status") == "up",
                 "the replica in sync")
        conf = workdir / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(f"sentinel monitor {SentinelPair.service} 127.0.0.1 {primary} 1\n"
                        f"sentinel down-after-milliseconds {SentinelPair.service} 1000\n"
                        f"sentinel failover-timeout {SentinelPair.service} 5000\n")
        servers.start(workdir, sentinel, str(conf), "--sentinel")
        pair = SentinelPair(servers, primary, replica, sentinel)

        def replica_known() -> bool:
            found = admin(sentinel).execute_command("SENTINEL", "REPLICAS", pair.service)
            return any(entry.get(b"master-link-status") == b"ok" for entry in found)

        wait_for(replica_known, "the sentinel to see the replica in sync")
        yield pair
