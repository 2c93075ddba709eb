"""CPU instructions per passthrough request, gateway and bare forwarder, counted by valgrind's
callgrind: a figure that neither the machine's load nor the sampling of a profiler moves (two
runs agree to about 0.5 %), for finding where the gateway's work goes and checking a change.

It is not the CPU-time ratio. valgrind counts a memory copy (`rep movsb`) about an instruction a
byte, so the answer's copies weigh far more than the microseconds they take, and the bare
forwarder copies it one more time than the gateway; the interpreter's instructions, most of the
gateway's extra, run at a lower rate than those copies. The second line therefore gives the
ratio without memcpy/memmove/memset, which comes closer to CPU time (2026-12-01: 1.35 with
the copies, 1.48 without, CPU time 1.49). A change that saves a copy and adds a system call
can look like a gain here and be none in bench/run.py: check there (paired rounds) as well.

Each side runs under callgrind twice, over FEW and then MANY requests at 64 connections (the
load of bench/run.py); the difference over the difference in requests is the per-request count,
start-up, warm-up and shut-down cancelled out. Instructions in the kernel (system calls) are not
counted: a saved write or random read shows in bench/run.py's CPU time, not here. Takes about
four minutes (valgrind runs Python some 50 times slower).

    python bench/instructions.py            # instructions per request and their ratio
    python bench/instructions.py --top 30   # and the C functions (the interpreter's included)
                                            # where the gateway's extra instructions go
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls  # noqa: E402 (the bare forwarder's script and the load)
import run as bench  # noqa: E402 (the bench's upstream and config)

FEW, MANY = 200, 1200


def counted(which: str, upstream: int, tmp: Path, count: int,
            procs: list[subprocess.Popen[Any]]) -> Path:
    """Runs one side under callgrind for `count` requests; the path of its callgrind file."""
    out = tmp / f"{which}-{count}.callgrind"
    calls.run_under(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                     sys.executable], "callgrind", which, upstream, tmp, count, procs,
                    startup_s=300)
    return out


# memcpy, memmove, memset: valgrind counts a `rep movsb` byte by byte, so a copy of the
# ~137 KB answer counts ~137 K instructions where the CPU spends a few microseconds; the bare
# forwarder copies the answer twice (aiohttp's parser, asyncio's writelines join), which makes
# the plain ratio look better than the CPU time does
_COPY = re.compile(r"__mem(?:cpy|move|set|pcpy)_")


def total(path: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {path}")
    return int(found.group(1))


def by_function(path: Path) -> dict[str, int]:
    """Instructions by C function (self cost), from callgrind_annotate."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", str(path)],
                          capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r"^/tmp/python-build[^ ]*?/Python-[\d.]+/", "", m.group(2).split(" [")[0])
            found[name] = found.get(name, 0) + int(m.group(1).replace(",", ""))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=0,
                        help="list the N C functions where the gateway spends most more")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen[Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upstream = bench.start_upstream(procs)
            files = {(w, n): counted(w, upstream, Path(tmp), n, procs)
                     for w in ("gateway", "bare") for n in (FEW, MANY)}
            per = {w: (total(files[w, MANY]) - total(files[w, FEW])) / (MANY - FEW)
                   for w in ("gateway", "bare")}
            print(f"instructions per passthrough request: gateway {per['gateway'] / 1e6:.3f}M, "
                  f"bare forwarder {per['bare'] / 1e6:.3f}M, ratio "
                  f"{per['gateway'] / per['bare']:.3f}")
            side = {}
            for w in ("gateway", "bare"):
                few, many = by_function(files[w, FEW]), by_function(files[w, MANY])
                side[w] = {k: (many.get(k, 0) - few.get(k, 0)) / (MANY - FEW)
                           for k in set(few) | set(many)}
            copies = {w: sum(n for k, n in side[w].items() if _COPY.search(k)) for w in side}
            rest = {w: per[w] - copies[w] for w in per}
            print(f"  without the C library's memory copies (gateway "
                  f"{copies['gateway'] / 1e3:.0f}K, bare {copies['bare'] / 1e3:.0f}K): "
                  f"gateway {rest['gateway'] / 1e6:.3f}M, "
                  f"bare {rest['bare'] / 1e6:.3f}M, ratio {rest['gateway'] / rest['bare']:.3f}"
                  " (the one closer to the CPU-time ratio)")
            if args.top:
                extra = sorted(((side["gateway"].get(k, 0) - side["bare"].get(k, 0), k)
                                for k in set(side["gateway"]) | set(side["bare"])), reverse=True)
                for more, name in extra[:args.top]:
                    print(f"{more:10.0f}  {name}")
    finally:
        for proc in procs:
            bench.stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
