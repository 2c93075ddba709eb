"""Admission alone, in one process: the client CPU and wall time of admit + finish through one
Redis and through a 3-node Redis Cluster, with every limit and budget of bench/run.py's key
(the full gateway's figures are too noisy on a shared machine to see a difference this small).

    python bench/admission.py [--admissions 3000] [--concurrency 16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagegate.config.schema import StateConfig  # noqa: E402
from imagegate.middlewares.limits import Cap, Limiter, Plan, Slot, Window  # noqa: E402
from run import redis_calls, start_redis, start_redis_cluster, stop  # noqa: E402

BIG = 100_000_000
TAG = "imagegate:use:{bench}:"
PLAN = Plan([Window("requests_per_minute", TAG + "rpm", BIG, 1),
             Window("images_per_minute", TAG + "ipm", BIG, 1)],
            [Slot("concurrent_requests", TAG + "con", 100_000)],
            [Cap("usd_per_day", TAG + "usd:d:x", BIG, 1000, True, time.time() + 86400),
             Cap("images_per_day", TAG + "img:d:x", BIG, 1, False, time.time() + 86400)])


async def load(state: StateConfig, admissions: int, concurrency: int) -> tuple[float, float]:
    """(client CPU µs, wall µs) per admitted request: one admission and its settlement."""
    limiter = Limiter(state)
    running = limiter.lifecycle(None)  # type: ignore[arg-type]
    await running.__anext__()
    left = [admissions]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            decision = await limiter.admit(PLAN)
            assert decision.backend is limiter.redis, "fell back to memory"
            await limiter.finish(decision, [-1000 + 1200, 0])  # cost known after: settled

    for _ in range(2):  # the first pass warms connections; the second is measured
        left[0] = admissions
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    try:
        await running.__anext__()
    except StopAsyncIteration:
        pass
    return cpu / admissions * 1e6, wall / admissions * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--admissions", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    procs: list[subprocess.Popen[Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="imagegate-admission-") as tmp:
            single = start_redis(Path(tmp), procs)
            cluster = start_redis_cluster(Path(tmp), procs)
            targets = {"one Redis": (StateConfig(backend="redis", redis_url=single[0]), single),
                       "cluster": (StateConfig(backend="redis", redis_url=cluster[0],
                                               redis_cluster=True), cluster)}
            best: dict[str, tuple[float, float, float]] = {}
            for _ in range(args.rounds):  # alternated: drift falls on both alike
                for name, (state, (_, _, ports)) in targets.items():
                    before = redis_calls(ports).get("evalsha", 0)
                    cpu, wall = asyncio.run(load(state, args.admissions, args.concurrency))
                    calls = (redis_calls(ports).get("evalsha", 0) - before) / (
                        2 * args.admissions)
                    if name not in best or cpu < best[name][0]:
                        best[name] = (cpu, wall, calls)
    finally:
        for proc in reversed(procs):
            stop(proc)
    print(f"{'':<10} {'client CPU µs/req':>18} {'wall µs/req':>12} {'EVALSHA/req':>12}")
    for name, (cpu, wall, calls) in best.items():
        print(f"{name:<10} {cpu:>18.1f} {wall:>12.1f} {calls:>12.2f}")
    ratio = best["cluster"][0] / best["one Redis"][0]
    print(f"cluster / one Redis, client CPU: {ratio:.2f}  (best of {args.rounds} rounds, "
          f"{args.admissions} admissions + settlements at concurrency {args.concurrency})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
