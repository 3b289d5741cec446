"""Cost of ``sample_updates`` (the measured update) on the MLP loop, measured side by side.

Loop (b): 3 x Linear(512), batch 64, Adam, LambdaLR stepped per iteration. Variants, alternating
in rounds (order flipped each round): untraced, traced (sample_updates=0), sample_updates=100 and
sample_updates=1. Quotes the median of the per-round ratios with their spread (min-max), and the
added time per sampled step. CPU time of the whole process, so the writer thread is counted; torch
is pinned to one intra-op thread (two threads on two shared cores make timings meaningless).

    python scripts/bench_sampling.py            # about a minute
    python scripts/bench_sampling.py --quick    # smoke run: checks the script works, figures are noise
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import lrdebug

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import loop_mlp  # noqa: E402

clock = time.process_time_ns


def mlp_loop():
    """(b) 3 x Linear(512), batch 64, Adam, LambdaLR per iteration: the loop of bench.py."""
    torch.manual_seed(0)
    return loop_mlp()


def run(iters: int, rounds: int, tmp: Path) -> dict[str, list[int]]:
    """CPU ns per round for each variant."""
    variants = {"untraced": None, "traced": 0, "sample_updates=100": 100, "sample_updates=1": 1}
    names = list(variants)
    times: dict[str, list[int]] = {n: [] for n in names}
    step = mlp_loop()
    for _ in range(10):  # warm up the allocator and caches
        step()
    count = 0
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            n = variants[name]
            count += 1
            ctx = (contextlib.nullcontext() if n is None
                   else lrdebug.trace(out=tmp / f"t{count}", summary=False, sample_updates=n))
            with ctx:
                t0 = clock()
                for _ in range(iters):
                    step()
                times[name].append(clock() - t0)
    return times


def ratio(times, a: str, b: str) -> str:
    rs = [x / y for x, y in zip(times[a], times[b])]
    return f"{statistics.median(rs):.3f}x (spread {min(rs):.3f}-{max(rs):.3f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few iterations: checks the script works")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    iters, rounds = (5, 2) if args.quick else (150, 15)
    print(f"lrdebug {lrdebug.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, {iters} iterations x {rounds} rounds")
    with tempfile.TemporaryDirectory() as d:
        times = run(iters, rounds, Path(d))
    per_iter = statistics.median(times["untraced"]) / iters / 1e3
    added_1 = statistics.median([(s - t) / iters for s, t in zip(times["sample_updates=1"], times["traced"])]) / 1e3
    rows = [
        ("(b) untraced time per iteration", f"{per_iter:.0f} us"),
        ("traced (sample_updates=0) / untraced", ratio(times, "traced", "untraced")),
        ("sample_updates=100 / untraced", ratio(times, "sample_updates=100", "untraced")),
        ("sample_updates=100 / traced", ratio(times, "sample_updates=100", "traced")),
        ("sample_updates=1 / untraced", ratio(times, "sample_updates=1", "untraced")),
        ("sample_updates=1 / traced", ratio(times, "sample_updates=1", "traced")),
        ("added time per sampled step", f"{added_1:.0f} us"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
