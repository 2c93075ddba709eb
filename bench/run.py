"""Imagegate benchmark: start-up, idle RSS, passthrough CPU per request, memory of a 50 MB edit."""
from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MODEL = "gpt-image-1"
BENCH_KEY = "ig-bench-key"
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}
GEN_BODY = json.dumps({"model": MODEL, "prompt": "a bench otter", "n": 1}).encode()
EDIT_BYTES = 50 * 1024 * 1024
MAX_ERRORS = 1000  # a dead gateway fails fast: stop the load rather than spin until the deadline
CLK_TCK = os.sysconf("SC_CLK_TCK")
# upper bounds shown next to the figures as "target"; never enforced
TARGETS = {
    "startup_s": 1.0,
    "idle_rss_mb": 60.0,
    "cpu_ms_per_request": 0.5,
    "edit_rss_increase_mb": 5.0,
    "cpu_ratio": 1.25,  # gateway CPU per passthrough request over the bare forwarder's
    "added_p50_ms": 0.3,  # at one connection
    "memory_added_ms": 0.1,  # gateway CPU that limits in memory add per request
    "redis_over_memory_ms": 0.3,  # limits in Redis over limits in memory (issue 10's bound)
    "cluster_cpu_ratio": 1.25,  # gateway CPU per request, limits on a cluster over one Redis
    "cluster_extra_evalsha": 0.01,  # script calls per request a cluster adds (redirects too)
}


# --- the mock OpenAI upstream (runs in its own process: `run.py --upstream`) ---------------

def noise_png(side: int = 185, seed: int = 7) -> bytes:
    """Random RGB noise does not deflate, so the PNG stays ~side*side*3 bytes (~100 KB)."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "PNG")
    return out.getvalue()


def upstream_answer() -> bytes:
    return json.dumps({
        "created": 1713833628,
        "data": [{"b64_json": base64.b64encode(noise_png()).decode()}],
        "output_format": "png",
        "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                  "input_tokens_details": {"image_tokens": 40, "text_tokens": 10}},
    }).encode()


def upstream_app() -> web.Application:
    answer = upstream_answer()
    stats = {"edit_bytes": 0, "edits": 0}

    async def generations(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    async def edits(request: web.Request) -> web.Response:
        # count the body as it streams and drop it: the mock must not add its own buffering
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        stats["edit_bytes"], stats["edits"] = size, stats["edits"] + 1
        return web.Response(body=answer, content_type="application/json")

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/images/generations", generations)
    app.router.add_post("/images/edits", edits)
    app.router.add_get("/stats", get_stats)
    return app


def bare_app(upstream: str) -> web.Application:
    """The baseline: an aiohttp proxy doing only the forwarding (one shared session)."""
    async def session_ctx(app: web.Application) -> Any:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    async def generations(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[SESSION].post(
                f"{upstream}/images/generations", data=body,
                headers={"Content-Type": "application/json", "Authorization": "Bearer k"}) as r:
            return web.Response(status=r.status, body=await r.read(),
                                content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/images/generations", generations)
    return app


SESSION = web.AppKey("session", aiohttp.ClientSession)


def serve_upstream(bare_for: str | None = None, featured_for: str | None = None) -> None:
    # a terminal Ctrl-C reaches the whole group; the bench stops this process itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> None:
        if featured_for:  # its log lines go to a file, as the gateway's do
            from featured import featured_app
            app = featured_app(featured_for, BENCH_KEY, tempfile.TemporaryFile())
        else:
            app = bare_app(bare_for) if bare_for else upstream_app()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        # port 0 avoids a bind race; the parent reads the real port from this one line
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


# --- processes and /proc -------------------------------------------------------------------

def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the bench dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stat_fields(pid: int) -> list[str]:
    # the command name may hold spaces or ')': the fields start after the last ')'
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def tree_cpu_ms(pid: int) -> float:
    """utime+stime of the process and its live descendants, plus its reaped children."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue  # exited while we walked
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    ticks = 0
    for p in tree:
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        ticks += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if p == pid else 0)
    return ticks * 1000 / CLK_TCK


def status_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/{pid}/status")


def start_upstream(procs: list[subprocess.Popen[Any]], bare_for: str | None = None,
                   featured: bool = False) -> int:
    """Spawns the mock upstream, or with `bare_for` the baseline forwarder to it (with
    `featured`, bench/featured.py's), listed in `procs` at once, for clean-up; returns its
    port."""
    mode = ([("--featured-proxy" if featured else "--bare-proxy"), bare_for] if bare_for
            else ["--upstream"])
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *mode],
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads yet)
    procs.append(proc)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        raise RuntimeError("the mock upstream did not start")
    return int(line)


# limits and a budget no load reaches: every admission runs all its checks and is admitted
BENCH_LIMITS = ("limits: {requests_per_minute: 100000000, images_per_minute: 100000000, "
                "concurrent_requests: 100000}, budget: {usd_per_day: 100000000, "
                "usd_per_month: 100000000, images_per_day: 100000000}")


def write_config(tmp: Path, upstream_port: int, limits: str = "off",
                 redis_url: str | None = None) -> Path:
    """`limits`: off (the key has none), memory, redis (state.backend at `redis_url`) or
    cluster (`redis_url` is a node of a Redis Cluster)."""
    path = tmp / f"imagegate-{limits}.yaml"
    key = f"{{id: bench, key: {BENCH_KEY}" + (f", {BENCH_LIMITS}}}" if limits != "off" else "}")
    state = ""
    if limits in ("redis", "cluster"):
        cluster = ", redis_cluster: true" if limits == "cluster" else ""
        state = f"state: {{backend: redis, redis_url: '{redis_url}'{cluster}}}\n"
    path.write_text(
        "server: {host: 127.0.0.1, port: 0, graceful_shutdown_s: 2}\n"
        f"storage: {{path: '{tmp / 'images'}'}}\n"  # keeps the repo free of ./data
        + state +
        "providers:\n"
        f"  openai: {{type: openai, base_url: 'http://127.0.0.1:{upstream_port}',"
        " api_key: sk-bench}\n"
        # a priced route: every answer is costed, whatever the limits
        f"models:\n  {MODEL}: {{routes: [{{provider: openai, price: {{tokens: "
        "{input_text: 5, input_image: 10, output: 40}}}]}\n"
        # one API key: every middleware on, as a gateway is run
        f"auth: {{keys: [{key}]}}\n")
    return path


Redis = tuple[str, tuple[int, ...], tuple[int, ...]]  # a URL, the servers' pids, their ports


def start_redis(tmp: Path, procs: list[subprocess.Popen[Any]], port: int | None = None,
                *extra: str) -> Redis:
    """A redis-server on a free loopback port for `--limits redis`."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("--limits redis needs redis-server (apt-get install redis-server)")
    port = port or free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)  # noqa: PLW1509
    procs.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return f"redis://127.0.0.1:{port}/0", (proc.pid,), (port,)
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def start_redis_cluster(tmp: Path, procs: list[subprocess.Popen[Any]]) -> Redis:
    """A 3-primary Redis Cluster for `--limits cluster` (ports below 55536: each node's bus
    listens 10000 above it)."""
    pids: list[int] = []
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port < 55536 and port not in ports:
            node = tmp / f"node-{port}"
            node.mkdir()
            _, pid, _ = start_redis(node, procs, port, "--cluster-enabled", "yes",
                                    "--cluster-config-file", f"nodes-{port}.conf")
            pids += pid
            ports.append(port)
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-yes"], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 20
    while not all(b"cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{ports[0]}/0", tuple(pids), tuple(ports)


def redis_cli(port: int, *command: str) -> bytes:
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True,
                          check=True, timeout=10).stdout


def redis_calls(ports: tuple[int, ...]) -> dict[str, int]:
    """Commands run so far on these servers, by name (INFO commandstats: the commands scripts
    run count too; refused ones, such as a MOVED redirect, are added in), INFO left out."""
    calls: dict[str, int] = {}
    for port in ports:
        for line in redis_cli(port, "INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line.partition(":")
                fields = dict(f.split("=") for f in stats.split(","))
                count = int(fields["calls"]) + int(fields.get("rejected_calls", 0))
                calls[name[8:]] = calls.get(name[8:], 0) + count
    calls.pop("info", None)
    return calls


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_gateway(config: Path, port: int, log: Path,
                  procs: list[subprocess.Popen[Any]]) -> tuple[subprocess.Popen[bytes], float]:
    """Spawns the gateway; start-up time runs from spawn until /healthz answers 200."""
    cmd = [sys.executable, "-m", "imagegate", "serve", "--config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:  # a file, not a pipe: one log line per request never blocks
        started = time.perf_counter()
        # the sampler thread starts later, so preexec_fn runs in a single-threaded process
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)  # noqa: PLW1509
    procs.append(proc)
    while not healthy(port):
        if proc.poll() is not None or time.perf_counter() - started > 30:
            raise RuntimeError(f"the gateway did not come up; its log:\n{tail(log)}")
        time.sleep(0.01)
    return proc, time.perf_counter() - started


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- load: concurrent passthrough generations ---------------------------------------------

class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""

    def fail(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


async def one_generation(session: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=GEN_BODY,
                                headers={"Content-Type": "application/json"}) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")
        return
    if resp.status != 200 or b'"b64_json"' not in body:
        tally.fail(f"HTTP {resp.status}: {body[:300]!r}")
        return
    tally.latencies.append(time.perf_counter() - started)


async def drive(session: aiohttp.ClientSession, url: str, concurrency: int, *,
                count: int | None = None, seconds: float | None = None) -> Tally:
    """Runs `concurrency` closed-loop clients until `count` requests or `seconds` are done."""
    tally = Tally()
    deadline = time.perf_counter() + seconds if seconds is not None else None
    left = [count if count is not None else -1]

    async def client() -> None:
        while deadline is None or time.perf_counter() < deadline:
            if tally.errors >= MAX_ERRORS:
                return
            if count is not None:
                if left[0] <= 0:
                    return
                left[0] -= 1
            await one_generation(session, url, tally)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def measure_load(base: str, pid: int, concurrency: int, seconds: float,
                       side_pids: tuple[int, ...] = (), redis_ports: tuple[int, ...] = ()
                       ) -> dict[str, Any]:
    """`side_pids`: helper processes (redis-servers) whose CPU is reported on its own;
    `redis_ports`: their commands are counted per request."""
    url = base + "/v1/images/generations"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=AUTH) as session:
        warm = await drive(session, url, concurrency, count=200)
        side_before = sum(tree_cpu_ms(p) for p in side_pids)
        calls_before = redis_calls(redis_ports) if redis_ports else {}
        cpu_before, started = tree_cpu_ms(pid), time.perf_counter()
        tally = await drive(session, url, concurrency, seconds=seconds)
        elapsed, cpu_ms = time.perf_counter() - started, tree_cpu_ms(pid) - cpu_before
        side_ms = sum(tree_cpu_ms(p) for p in side_pids) - side_before if side_pids else None
        calls = redis_calls(redis_ports) if redis_ports else {}
    done = len(tally.latencies)
    per_request = {name: round((n - calls_before.get(name, 0)) / done, 3)
                   for name, n in calls.items() if done and n > calls_before.get(name, 0)}
    lat = sorted(tally.latencies)
    return {
        "concurrency": concurrency, "seconds": round(elapsed, 2), "requests": done,
        "warmup_errors": warm.errors, "errors": tally.errors,
        "first_error": tally.first_error or warm.first_error or None,
        "requests_per_s": round(done / elapsed, 1),
        "cpu_ms_per_request": round(cpu_ms / done, 3) if done else None,
        "gateway_cpu_busy_pct": round(cpu_ms / (elapsed * 10), 1),
        "p50_ms": round(percentile(lat, 0.50) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
        "rss_after_load_mb": round(status_kb(pid) / 1024, 1),
        "side_cpu_ms_per_request": round(side_ms / done, 3) if side_ms is not None and done
        else None,
        "redis_calls_per_request": per_request if redis_ports else None,
    }


# --- Redis operations per request, feature by feature (MONITOR, sequential requests) --------

OPS_KEYS = {  # key id -> what it has
    "none": "", "rpm": ", limits: {requests_per_minute: 100000000}",
    "concurrency": ", limits: {concurrent_requests: 100000}",
    "usd": ", budget: {usd_per_day: 100000000}", "all": ", " + BENCH_LIMITS,
}
# (label, key id, body, Idempotency-Key prefix or None, fetch the hosted link)
OPS_CASES: list[tuple[str, str, dict[str, Any], str | None, bool]] = [
    ("no limits", "none", {"model": MODEL}, None, False),
    ("requests_per_minute", "rpm", {"model": MODEL}, None, False),
    ("concurrent_requests", "concurrency", {"model": MODEL}, None, False),
    ("usd_per_day (token-priced)", "usd", {"model": MODEL}, None, False),
    ("every limit and budget", "all", {"model": MODEL}, None, False),
    ("Idempotency-Key, first", "none", {"model": MODEL}, "ops", False),
    ("Idempotency-Key, replayed", "none", {"model": MODEL}, "ops", False),
    ("url answer, storage redis", "none", {"model": "local", "size": "64x64",
                                            "response_format": "url"}, None, False),
    ("  and its link fetched", "none", {"model": "local", "size": "64x64",
                                        "response_format": "url"}, None, True),
]


def ops_config(tmp: Path, upstream_port: int, url: str, cluster: bool) -> Path:
    path = tmp / f"imagegate-ops-{'cluster' if cluster else 'redis'}.yaml"
    keys = ", ".join(f"{{id: {kid}, key: ig-ops-{kid}{extra}}}" for kid, extra in OPS_KEYS.items())
    path.write_text(
        "server: {host: 127.0.0.1, port: 0, graceful_shutdown_s: 2}\n"
        f"state: {{backend: redis, redis_url: '{url}', redis_cluster: {str(cluster).lower()}}}\n"
        "storage: {backend: redis, signing_secret: bench}\n"
        "providers:\n"
        f"  openai: {{type: openai, base_url: 'http://127.0.0.1:{upstream_port}',"
        " api_key: sk-bench}\n  local: {type: local}\n"
        f"models:\n  {MODEL}: {{routes: [{{provider: openai, price: {{tokens: "
        "{input_text: 5, input_image: 10, output: 40}}}]}\n"
        "  local: {routes: [{provider: local}]}\n"
        f"auth: {{keys: [{keys}]}}\n")
    return path


class Monitor:
    """`redis-cli monitor` on every node: who sent each command (a client, or a script)."""

    def __init__(self, ports: tuple[int, ...], path: Path) -> None:
        self.path, self.out = path, path.open("wb")
        self.procs = [subprocess.Popen(["redis-cli", "-p", str(p), "monitor"], stdout=self.out,
                                       stderr=subprocess.DEVNULL) for p in ports]
        time.sleep(0.3)

    def stop(self) -> tuple[Counter[str], Counter[str]]:
        time.sleep(0.3)
        for proc in self.procs:
            stop(proc)
        self.out.close()
        sent: Counter[str] = Counter()
        scripted: Counter[str] = Counter()
        for line in self.path.read_text(errors="replace").splitlines():
            head, _, rest = line.partition("] ")
            if not rest.startswith('"'):
                continue
            name = rest.split('"')[1].upper()
            (scripted if head.endswith(" lua") else sent)[name] += 1
        return sent, scripted


async def ops_requests(base: str, key: str, body: dict[str, Any], idem: str | None,
                       fetch: bool, count: int) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer ig-ops-{key}"}) as s:
        for i in range(count):
            headers = {"Idempotency-Key": f"{idem}-{i}"} if idem else {}
            async with s.post(f"{base}/v1/images/generations", json={"prompt": "ops", **body},
                              headers=headers) as resp:
                answer = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"redis-ops: HTTP {resp.status}: {answer}")
            if fetch:
                async with s.get(answer["data"][0]["url"]) as image:
                    await image.read()


def measure_redis_ops(tmp: Path, upstream_port: int, mode: str,
                      procs: list[subprocess.Popen[Any]], count: int = 20) -> dict[str, Any]:
    """Redis commands one request costs with each feature on: those the gateway sends (a
    script call is one) and those its scripts run, from MONITOR over `count` requests in turn
    (one at a time: no batching). The rest poll (PTTL per route pair each second) is apart."""
    url, _, ports = start_redis_cluster(tmp, procs) if mode == "cluster" \
        else start_redis(tmp, procs)
    config = ops_config(tmp, upstream_port, url, mode == "cluster")
    port = free_port()
    note(f"redis-ops on {mode}: a gateway on :{port}, {count} requests per case")
    start_gateway(config, port, tmp / f"gateway-ops-{mode}.log", procs)
    base, figures, polls, watched = f"http://127.0.0.1:{port}", {}, 0, 0.0
    for n, (label, key, body, idem, fetch) in enumerate(OPS_CASES):
        started = time.monotonic()  # before MONITOR connects: it counts from then
        monitor = Monitor(ports, tmp / f"monitor-{mode}-{n}.txt")
        asyncio.run(ops_requests(base, key, body, idem, fetch, count))
        sent, scripted = monitor.stop()
        polls += sent.pop("PTTL", 0)
        watched += time.monotonic() - started
        figures[label] = {"sent": {k: round(v / count, 2) for k, v in sorted(sent.items())},
                          "scripted": round(sum(scripted.values()) / count, 2)}
    return {"cases": figures, "rest_polls_per_s": round(polls / watched, 2)}


def print_ops(results: dict[str, Any], out: Any) -> None:
    for mode, found in results.get("redis_ops", {}).items():
        cases = found["cases"]
        print(f"\nRedis commands per request on {mode} (sent by the gateway; run by its "
              "scripts)", file=out)
        for label, f in cases.items():
            sent = " ".join(f"{k}={v:g}" for k, v in f["sent"].items()) or "-"
            print(f"  {label:<30} sent {sum(f['sent'].values()):>5g}: {sent:<40} "
                  f"in scripts {f['scripted']:g}", file=out)
        print(f"  rest poll: {found['rest_polls_per_s']:g} PTTL per second (2 route pairs here: "
              "one each per second)", file=out)


# --- memory: one large multipart edit -------------------------------------------------------

class RssSampler(threading.Thread):
    """Samples VmRSS every 5 ms: VmHWM cannot be reset, so it would show older peaks too."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.done = pid, status_kb(pid), threading.Event()
        self.samples = 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak_kb = max(self.peak_kb, status_kb(self.pid))
                self.samples += 1
            except (OSError, RuntimeError):
                return
            self.done.wait(0.005)


def edit_form(image: bytes, model_first: bool) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("prompt", "a bench otter")
    if model_first:
        form.add_field("model", MODEL)
    form.add_field("image", image, filename="big.png", content_type="image/png")
    if not model_first:  # the gateway must then spool the body to learn the model
        form.add_field("model", MODEL)
    return form


def big_image(size: int) -> bytes:
    """A real PNG head (the gateway sniffs the first bytes), padded with random bytes."""
    head = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(head, "PNG")
    data = head.getvalue()
    return data + random.Random(11).randbytes(max(0, size - len(data)))


async def one_edit(session: aiohttp.ClientSession, base: str, image: bytes,
                   model_first: bool) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    async with session.post(base + "/v1/images/edits", data=edit_form(image, model_first)) as r:
        body = await r.read()
    return r.status, body, time.perf_counter() - started


async def measure_edit(session: aiohttp.ClientSession, base: str, upstream: str, pid: int,
                       image: bytes, model_first: bool) -> dict[str, Any]:
    await asyncio.sleep(0.3)  # let the previous request's buffers be freed before the baseline
    before_kb, hwm_before = status_kb(pid), status_kb(pid, "VmHWM")
    sampler = RssSampler(pid)
    sampler.start()
    try:
        status, body, seconds = await one_edit(session, base, image, model_first)
    finally:
        sampler.done.set()
        sampler.join()
    async with session.get(upstream + "/stats") as resp:
        received = (await resp.json())["edit_bytes"]
    return {
        "status": status, "error": None if status == 200 else body[:300].decode("replace"),
        "seconds": round(seconds, 2), "upload_mb": round(len(image) / 2**20, 1),
        "upstream_received_mb": round(received / 2**20, 1),
        "rss_before_mb": round(before_kb / 1024, 1), "rss_samples": sampler.samples,
        "rss_increase_mb": round((sampler.peak_kb - before_kb) / 1024, 2),
        "rss_after_mb": round(status_kb(pid) / 1024, 1),
        # VmHWM counts from process start: it moves only if this edit set a new record
        "hwm_increase_mb": round((status_kb(pid, "VmHWM") - hwm_before) / 1024, 2),
    }


async def measure_edits(base: str, upstream: str, pid: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, headers=AUTH) as session:
        # a small edit first: lazy set-up (upstream connection, first-call code) is not the
        # large upload's cost
        await one_edit(session, base, big_image(256 * 1024), True)
        image = big_image(EDIT_BYTES)
        streamed = await measure_edit(session, base, upstream, pid, image, model_first=True)
        spooled = await measure_edit(session, base, upstream, pid, image, model_first=False)
    return {"streamed": streamed, "spooled": spooled}


# --- report ----------------------------------------------------------------------------------

def verdict(name: str, value: Any) -> tuple[str, str]:
    target = TARGETS.get(name)
    if target is None or not isinstance(value, int | float):
        return "", ""
    return f"<= {target:g}", "ok" if value <= target else "OVER"


def table_rows(r: dict[str, Any]) -> list[tuple[str, Any, str]]:
    loads, edits = r.get("load", {}), r.get("edit", {})
    rows = [("start-up (s)", r["startup_s"], "startup_s"),
            ("idle RSS (MB)", r["idle_rss_mb"], "idle_rss_mb")]
    bares = r.get("baseline", {})
    for c, load in loads.items():
        at = f"C={c}: "
        rows += [(at + "requests/s", load["requests_per_s"], ""),
                 (at + "errors", load["errors"], ""),
                 (at + "gateway CPU ms / request", load["cpu_ms_per_request"],
                  "cpu_ms_per_request"),
                 (at + "gateway CPU busy (%)", load["gateway_cpu_busy_pct"], ""),
                 (at + "latency p50 (ms)", load["p50_ms"], ""),
                 (at + "latency p99 (ms)", load["p99_ms"], ""),
                 (at + "RSS after load (MB)", load["rss_after_load_mb"], "")]
        bare = bares.get(c)
        if bare and load["cpu_ms_per_request"] and bare["cpu_ms_per_request"]:
            ratio = round(load["cpu_ms_per_request"] / bare["cpu_ms_per_request"], 2)
            rows += [(at + "bare forwarder CPU ms / request", bare["cpu_ms_per_request"], ""),
                     (at + "CPU ratio gateway / bare", ratio, "cpu_ratio"),
                     (at + "bare forwarder p50 (ms)", bare["p50_ms"], ""),
                     (at + "added p50 latency (ms)", round(load["p50_ms"] - bare["p50_ms"], 2),
                      "added_p50_ms" if c == 1 else "")]
            featured = r.get("featured", {}).get(c)
            if featured and featured["cpu_ms_per_request"]:
                cpu = featured["cpu_ms_per_request"]
                rows += [(at + "featured forwarder CPU ms / request", cpu, ""),
                         (at + "CPU ratio featured / bare",
                          round(cpu / bare["cpu_ms_per_request"], 2), ""),
                         (at + "CPU ratio gateway / featured",
                          round(load["cpu_ms_per_request"] / cpu, 2), ""),
                         (at + "featured added p50 latency (ms)",
                          round(featured["p50_ms"] - bare["p50_ms"], 2), "")]
    for mode, levels in r.get("limits", {}).items():
        for c, load in levels.items():
            at, off = f"C={c}, {mode} limits: ", loads.get(c, {}).get("cpu_ms_per_request")
            rows += [(at + "CPU ms / request", load["cpu_ms_per_request"], ""),
                     (at + "errors", load["errors"], "")]
            if off and load["cpu_ms_per_request"]:
                rows.append((at + "added CPU ms / req (vs off)",
                             round(load["cpu_ms_per_request"] - off, 3),
                             "memory_added_ms" if mode == "memory" else ""))
            memory = r["limits"].get("memory", {}).get(c, {}).get("cpu_ms_per_request")
            if mode == "redis" and memory and load["cpu_ms_per_request"]:
                rows.append((at + "added CPU ms / req (vs memory)",
                             round(load["cpu_ms_per_request"] - memory, 3),
                             "redis_over_memory_ms"))
            if load.get("side_cpu_ms_per_request") is not None:
                rows.append((at + "redis-server CPU ms / req", load["side_cpu_ms_per_request"],
                             ""))
            rows.append((at + "latency p50 (ms)", load["p50_ms"], ""))
            rows.append((at + "requests/s", load["requests_per_s"], ""))
            calls = load.get("redis_calls_per_request")
            if calls is not None:  # a script call is one round trip (or less: pipelined)
                rows += [(at + "Redis EVALSHA / req", calls.get("evalsha", 0.0), ""),
                         (at + "Redis commands run / req", round(sum(calls.values()), 3), "")]
            single = r["limits"].get("redis", {}).get(c, {})
            if mode == "cluster" and single.get("cpu_ms_per_request") and \
                    load["cpu_ms_per_request"]:
                rows += [(at + "CPU ratio cluster / one Redis",
                          round(load["cpu_ms_per_request"] / single["cpu_ms_per_request"], 2),
                          "cluster_cpu_ratio"),
                         (at + "requests/s ratio cluster / one Redis",
                          round(load["requests_per_s"] / single["requests_per_s"], 2), "")]
                one = single.get("redis_calls_per_request")
                if calls is not None and one is not None:
                    rows += [(at + "EVALSHA / req added by the cluster",
                              round(calls.get("evalsha", 0.0) - one.get("evalsha", 0.0), 3),
                              "cluster_extra_evalsha"),
                             (at + "commands run / req added by the cluster",
                              round(sum(calls.values()) - sum(one.values()), 3), "")]
    for kind, label in (("streamed", "fields first"), ("spooled", "model after file")):
        e = edits.get(kind)
        if e:
            rows += [(f"50 MB edit, {label}: status", e["status"], ""),
                     (f"50 MB edit, {label}: peak RSS +MB", e["rss_increase_mb"],
                      "edit_rss_increase_mb"),
                     (f"50 MB edit, {label}: seconds", e["seconds"], ""),
                     (f"50 MB edit, {label}: upstream got MB", e["upstream_received_mb"], "")]
    return rows


def print_table(results: dict[str, Any], out: Any) -> None:
    print(f"\n{'figure':<46} {'value':>10}  {'target':<8} ", file=out)
    print("-" * 70, file=out)
    for label, value, key in table_rows(results):
        target, mark = verdict(key, value)
        print(f"{label:<46} {value!s:>10}  {target:<8} {mark}", file=out)
    for c, load in results.get("load", {}).items():
        if load.get("first_error"):
            print(f"\nfirst error at C={c}: {load['first_error']}", file=out)
    for kind, e in results.get("edit", {}).items():
        if e.get("error"):
            print(f"\n{kind} edit error: {e['error']}", file=out)


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0, help="load duration (default 10)")
    p.add_argument("--concurrency", type=_levels, default=[64],
                   help="parallel clients, one level or several (e.g. 1,64; default 64)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate gateway and baseline loads this many times and keep each "
                        "one's least-disturbed round (default 1)")
    p.add_argument("--skip-edit", action="store_true", help="skip the 50 MB edit figures")
    p.add_argument("--skip-load", action="store_true", help="skip the generation load")
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    p.add_argument("--baseline", action="store_true",
                   help="also load a bare aiohttp forwarder and report the chain's overhead")
    p.add_argument("--limits", type=_modes, default=[],
                   help="also load gateways whose key has limits and a budget: memory, redis, "
                        "cluster or several (memory,redis,cluster; redis starts a redis-server, "
                        "cluster a 3-node Redis Cluster); reports the CPU each adds over the "
                        "gateway without limits and the Redis commands per request")
    p.add_argument("--redis-ops", type=_ops_modes, default=[],
                   help="count the Redis commands one request costs with each feature on "
                        "(limits, budget, idempotency, url storage): redis, cluster or both")
    p.add_argument("--featured", action="store_true",
                   help="with --baseline, also load bench/featured.py (the bare forwarder plus "
                        "the gateway's per-request features inline): what the features cost "
                        "apart from the gateway's structure")
    p.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare-proxy", help=argparse.SUPPRESS)
    p.add_argument("--featured-proxy", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _modes(text: str) -> list[str]:
    modes = [v.strip() for v in text.split(",") if v.strip()]
    for mode in modes:
        if mode not in ("memory", "redis", "cluster"):
            raise argparse.ArgumentTypeError(f"unknown limits mode {mode!r} (memory, redis, "
                                             "cluster)")
    return modes


def _ops_modes(text: str) -> list[str]:
    modes = [v.strip() for v in text.split(",") if v.strip()]
    for mode in modes:
        if mode not in ("redis", "cluster"):
            raise argparse.ArgumentTypeError(f"unknown redis-ops mode {mode!r} (redis, cluster)")
    return modes


def _levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def note(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def measure(args: argparse.Namespace, base: str, upstream: str, pid: int,
                  results: dict[str, Any]) -> None:
    # the edits run first, on a process no load has grown yet: freed load buffers would
    # otherwise absorb the edit's allocations and hide them from RSS
    if not args.skip_edit:
        note("50 MB multipart edits (fields first, then model after the file)")
        results["edit"] = await measure_edits(base, upstream, pid)


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the least CPU per request: other work on a shared machine only ever
    adds CPU time, so the least-disturbed round is the truest figure."""
    return min(runs, key=lambda r: r["cpu_ms_per_request"] or float("inf"))


Target = tuple[str, int, tuple[int, ...], tuple[int, ...]]  # URL, pid, Redis pids and ports


def run_loads(args: argparse.Namespace, targets: dict[str, Target],
              results: dict[str, Any]) -> None:
    """Each round loads every target in turn at every level (one target at a time: the idle
    one costs nothing), so drift on a shared machine falls on both alike."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {c: [] for c in args.concurrency} for name in targets}
    for round_no in range(1, args.rounds + 1):
        for c in args.concurrency:
            for name, (base, pid, sides, ports) in targets.items():
                note(f"round {round_no}/{args.rounds}: {name}, 200 warm-up requests, then "
                     f"{args.seconds:g} s at concurrency {c}")
                runs[name][c].append(asyncio.run(measure_load(base, pid, c, args.seconds,
                                                              sides, ports)))
    for name, levels in runs.items():
        figures = {c: best(rounds) for c, rounds in levels.items()}
        if name.endswith(" limits"):
            results.setdefault("limits", {})[name.split()[0]] = figures
        else:
            results[{"gateway": "load", "featured forwarder": "featured"}.get(
                name, "baseline")] = figures


def run(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen[Any]]) -> dict:
    upstream_port = start_upstream(procs)
    config, log, port = write_config(tmp, upstream_port), tmp / "gateway.log", free_port()
    note(f"mock upstream on :{upstream_port}; starting the gateway on :{port}")
    gateway, startup = start_gateway(config, port, log, procs)
    time.sleep(0.2)  # let start-up allocations settle before the idle reading
    results: dict[str, Any] = {"startup_s": round(startup, 3),
                               "idle_rss_mb": round(status_kb(gateway.pid) / 1024, 1)}
    try:
        asyncio.run(measure(args, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{upstream_port}",
                            gateway.pid, results))
        if not args.skip_load:
            targets: dict[str, Target] = {
                "gateway": (f"http://127.0.0.1:{port}", gateway.pid, (), ())}
            if args.baseline:
                bare_port = start_upstream(procs, f"http://127.0.0.1:{upstream_port}")
                targets["bare forwarder"] = (f"http://127.0.0.1:{bare_port}", procs[-1].pid,
                                             (), ())
                if args.featured:
                    port = start_upstream(procs, f"http://127.0.0.1:{upstream_port}", True)
                    targets["featured forwarder"] = (f"http://127.0.0.1:{port}",
                                                     procs[-1].pid, (), ())
            for mode in args.limits:
                targets[f"{mode} limits"] = limited_gateway(tmp, upstream_port, mode, procs)
            run_loads(args, targets, results)
        for mode in args.redis_ops:
            results.setdefault("redis_ops", {})[mode] = measure_redis_ops(
                tmp, upstream_port, mode, procs)
    finally:
        if gateway.poll() is not None:
            note(f"the gateway exited ({gateway.returncode}); its log:\n{tail(log)}")
    return results


def limited_gateway(tmp: Path, upstream_port: int, mode: str,
                    procs: list[subprocess.Popen[Any]]) -> Target:
    """Another gateway whose key has limits and a budget, kept in memory, in one Redis or in
    a Redis Cluster."""
    url, pids, ports = None, (), ()
    if mode == "redis":
        url, pids, ports = start_redis(tmp, procs)
    elif mode == "cluster":
        url, pids, ports = start_redis_cluster(tmp, procs)
    config = write_config(tmp, upstream_port, mode, url)
    port = free_port()
    note(f"gateway with {mode} limits on :{port}")
    proc, _ = start_gateway(config, port, tmp / f"gateway-{mode}.log", procs)
    return f"http://127.0.0.1:{port}", proc.pid, pids, ports


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upstream or args.bare_proxy or args.featured_proxy:
        serve_upstream(args.bare_proxy, args.featured_proxy)
        return 0
    # SIGTERM takes the same clean-up path as Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    procs: list[subprocess.Popen[Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
            results = run(args, Path(tmp), procs)
            for proc in reversed(procs):
                stop(proc)
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except RuntimeError as exc:
        note(f"failed: {exc}")
        return 1
    finally:
        for proc in reversed(procs):
            stop(proc)
    print_table(results, sys.stderr if args.json else sys.stdout)
    print_ops(results, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"targets": TARGETS, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
