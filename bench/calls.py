"""Python function calls per passthrough request, gateway and bare forwarder: a figure that does
not drift with the machine's load as CPU times do (same mock upstream and load as bench/run.py).

Each side runs under cProfile twice, over FEW and then MANY requests; the difference over the
difference in requests is the per-request count, start-up and warm-up cancelled out. A coroutine
resumed counts as a call, as cProfile counts it. `--top N` lists the functions whose per-request
calls differ most between the two (what the gateway adds).

    python bench/calls.py              # calls per request and their ratio
    python bench/calls.py --top 40     # and where the gateway's extra calls are
"""
from __future__ import annotations

import argparse
import asyncio
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402 (the bench's upstream, config and load)

FEW, MANY, CONCURRENCY = 1000, 4000, 64
BARE = """
import asyncio, signal, sys
sys.path.insert(0, sys.argv[2])
import run as bench
from aiohttp import web
async def main():
    runner = web.AppRunner(bench.bare_app(sys.argv[1]), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
asyncio.run(main())
"""
Counts = dict[tuple[str, int, str], int]


def run_under(prefix: list[str], what: str, which: str, upstream: int, tmp: Path, count: int,
              procs: list[subprocess.Popen[Any]], startup_s: float) -> None:
    """Runs one side (the gateway, or the bare forwarder) as `prefix` + its Python arguments
    (a profiler or valgrind, ending with the interpreter), loads it with `count` requests, then
    stops it cleanly so the tool writes its file."""
    with (tmp / f"{which}.log").open("wb") as log:
        if which == "bare":
            script = tmp / "bare.py"
            script.write_text(BARE)
            proc = subprocess.Popen([*prefix, str(script), f"http://127.0.0.1:{upstream}",
                                     str(Path(__file__).resolve().parent)],
                                    stdout=subprocess.PIPE, stderr=log, text=True)
            procs.append(proc)
            port = int(proc.stdout.readline()) if proc.stdout else 0
        else:
            port = bench.free_port()
            config = bench.write_config(tmp, upstream)
            proc = subprocess.Popen([*prefix, "-m", "imagegate", "serve", "--config",
                                     str(config), "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=bench.REPO, stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
            deadline = time.monotonic() + startup_s
            while not bench.healthy(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not come up under {what}")
                time.sleep(0.05)
        tally = asyncio.run(_load(port, count))
        if tally.errors:
            raise RuntimeError(f"{which}: {tally.errors} errors ({tally.first_error})")
        proc.send_signal(signal.SIGTERM)  # a clean stop: the tool writes its file at exit
        proc.wait(timeout=startup_s * 2)


def profiled(which: str, upstream: int, tmp: Path, count: int,
             procs: list[subprocess.Popen[Any]]) -> Counts:
    """Runs one side under cProfile for `count` requests; its calls by function."""
    out = tmp / f"{which}-{count}.prof"
    run_under([sys.executable, "-m", "cProfile", "-o", str(out)], "cProfile", which, upstream,
              tmp, count, procs, startup_s=30)
    stats: Any = pstats.Stats(str(out)).stats
    return {key: value[1] for key, value in stats.items()}


async def _load(port: int, count: int) -> bench.Tally:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=bench.AUTH) as session:
        return await bench.drive(session, f"http://127.0.0.1:{port}/v1/images/generations",
                                 CONCURRENCY, count=count)


def per_request(few: Counts, many: Counts) -> dict[tuple[str, int, str], float]:
    return {k: (n - few.get(k, 0)) / (MANY - FEW) for k, n in many.items()}


def name(key: tuple[str, int, str]) -> str:
    path, line, func = key
    short = path.split("site-packages/")[-1].replace(str(bench.REPO) + "/", "")
    return f"{short}:{line} {func}" if line else func


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=0,
                        help="list the N functions the gateway calls most more often than bare")
    args = parser.parse_args(argv)
    procs: list[subprocess.Popen[Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upstream = bench.start_upstream(procs)
            sides = {which: per_request(profiled(which, upstream, Path(tmp), FEW, procs),
                                        profiled(which, upstream, Path(tmp), MANY, procs))
                     for which in ("gateway", "bare")}
    finally:
        for proc in procs:
            bench.stop(proc)
    gateway, bare = (sum(sides[w].values()) for w in ("gateway", "bare"))
    print(f"Python calls per passthrough request: gateway {gateway:.0f}, bare forwarder "
          f"{bare:.0f}, ratio {gateway / bare:.2f}")
    if args.top:
        extra = sorted(((n - sides["bare"].get(k, 0.0), k) for k, n in sides["gateway"].items()),
                       reverse=True)
        for more, key in extra[:args.top]:
            print(f"{more:8.1f}  {name(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
