"""Peak memory of a long run under lrdebug.trace(): is the recorder's memory bounded?

Runs the cheapest loop there is (one scalar parameter, SGD, ``optimizer.step()`` only, so the
recorder's share is as large as it can be) for ``--steps`` steps in three child processes:

- ``plain``: torch only;
- ``imported``: torch, lrdebug and what it writes with (pyarrow, which imports pandas) imported,
  nothing recorded;
- ``traced``: the same loop inside ``lrdebug.trace()``.

Each child reports its peak RSS (``ru_maxrss``) and its RSS after 10% and at the end of the loop. The
figure that matters is ``traced - imported``: what recording a run of that length holds; a bounded
recorder shows little growth between 10% and the end. Then the trace is loaded and its optimizer
steps counted.

    .venv/bin/python scripts/bench_memory.py              # 1M steps, a few minutes on 2 slow cores
    .venv/bin/python scripts/bench_memory.py --steps 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 64


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(mode: str, steps: int, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    if mode != "plain":
        import pandas  # noqa: F401 - pyarrow imports it on the first conversion, in the traced run too
        import pyarrow.parquet  # noqa: F401

        import lrdebug
        import lrdebug.record  # noqa: F401
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=1e-3)
    p.grad = torch.ones(())
    marks = {}

    def loop():
        t0 = time.perf_counter()
        for i in range(steps):
            opt.step()
            if i == steps // 10:
                marks["rss_10pct_mb"] = _rss_mb()
        marks["loop_s"] = time.perf_counter() - t0
        marks["rss_end_mb"] = _rss_mb()

    if mode == "traced":
        with lrdebug.trace(opt, out=out, summary=False, ignore=["grads-not-cleared"]):
            loop()
    else:
        loop()
    marks["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(marks))


def run_child(mode: str, steps: int, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} child failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--out", help="trace directory for the traced run (default: a temporary one)")
    parser.add_argument("--child", choices=["plain", "imported", "traced"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or str(Path(tmp) / "trace")
        results = {mode: run_child(mode, args.steps, out) for mode in ("plain", "imported", "traced")}
        import numpy as np

        import lrdebug

        df = lrdebug.load(out, columns=["event", "step"])
        steps = df[df["event"] == "optimizer_step"]["step"]
        parts = len(list(Path(out).glob("rank=0/part-*.parquet")))
        size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
        ok = np.array_equal(steps.to_numpy(dtype=np.int64), np.arange(1, args.steps + 1))
    print(f"{args.steps:,} optimizer steps, one scalar parameter, SGD (torch threads: 1)")
    print(f"{'':10} {'peak RSS':>10} {'RSS at 10%':>11} {'RSS at end':>11} {'loop':>8}")
    for mode, r in results.items():
        print(f"{mode:10} {r['peak_rss_mb']:8.1f} MB {r['rss_10pct_mb']:8.1f} MB {r['rss_end_mb']:8.1f} MB "
              f"{r['loop_s']:6.1f} s")
    growth = results["traced"]["peak_rss_mb"] - results["imported"]["peak_rss_mb"]
    total = results["traced"]["peak_rss_mb"] - results["plain"]["peak_rss_mb"]
    during = results["traced"]["rss_end_mb"] - results["traced"]["rss_10pct_mb"]
    print(f"recording: peak RSS +{growth:.1f} MB over the untraced loop with lrdebug imported "
          f"(target <= {TARGET_MB} MB); +{total:.1f} MB over torch alone (imports included)")
    print(f"traced RSS from 10% to the end of the loop: {during:+.1f} MB")
    print(f"trace: {len(steps):,} optimizer_step rows in {parts} parts, {size:.1f} MiB; "
          f"steps 1..{args.steps:,} all present: {ok}")
    return 0 if ok and growth <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
