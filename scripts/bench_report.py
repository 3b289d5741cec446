"""Time and peak memory of ``lrdebug report`` on large synthetic traces.

    python scripts/bench_report.py                 # 1M and 10M optimizer_step rows, traces under /tmp
    python scripts/bench_report.py --rows 1000000 --pandas
    python scripts/bench_report.py --ranks 1 16 64 256    # N ranks x 100k steps x 2 groups each

Each trace is made once by ``scripts/make_big_trace.py`` (an iteration records a zero_grad, an
optimizer step and a scheduler step, so 10M optimizer_step rows are 30M rows) and kept for later
runs (a trace kept from before part summaries existed is reported from its rows: delete it to have it
made again). Each measurement is a fresh ``lrdebug report`` process; its wall time, CPU time and peak RSS
come from ``os.wait4`` on that process. ``--pandas`` also measures ``lrdebug.load()`` (the whole
trace as a DataFrame) for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LRDEBUG = [sys.executable, "-m", "lrdebug"]


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def trace_for(rows: int, where: Path, ranks: int | None = None) -> Path:
    """A 1-group trace of ``rows`` steps, or ``ranks`` ranks of 100k steps x 2 groups: rank 7 diverges at
    step 50,000, the third-last rank stops at 90,000, ranks 5 and 13 are slow."""
    if ranks is None:
        out, extra = where / f"lrdebug-bench-{rows}", ["--rows", str(rows)]
    else:
        out = where / f"lrdebug-bench-{ranks}ranks"
        extra = ["--ranks", str(ranks), "--rows", "200000", "--groups", "2", "--diverge", "7:50000",
                 "--short", f"{max(ranks - 3, 0)}:90000", "--slow", "13:1.8", "--slow", "5:1.3"]
    if not (out / "rank=0" / "_lrdebug_status.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_big_trace.py"), *extra, str(out)], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                    help="optimizer_step rows of each trace")
    ap.add_argument("--ranks", type=int, nargs="*", default=None,
                    help="measure traces of this many ranks (100k steps x 2 groups each) instead of --rows")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the traces are kept")
    ap.add_argument("--pandas", action="store_true", help="also measure lrdebug.load() of the whole trace")
    args = ap.parse_args()

    print(f"{'trace':>22} {'rows':>12} {'MiB':>7} {'command':>24} {'wall s':>7} {'CPU s':>6} {'peak MiB':>9}")
    todo = [(None, n) for n in args.ranks] if args.ranks else [(rows, None) for rows in args.rows]
    for rows, ranks in todo:
        path = trace_for(rows, args.dir, ranks)
        total = sum(len(p.read_bytes()) for p in path.rglob("*.parquet")) / 2**20
        import pyarrow.parquet as pq

        n = sum(pq.ParquetFile(p).metadata.num_rows for p in path.rglob("*.parquet"))
        cmds = {"report --format json": LRDEBUG + ["report", str(path), "--format", "json"],
                "report (text)": LRDEBUG + ["report", str(path), "--width", "100"]}
        if args.pandas:
            cmds["lrdebug.load()"] = [sys.executable, "-c", f"import lrdebug; lrdebug.load({str(path)!r})"]
        for name, cmd in cmds.items():
            runs = [measure(cmd) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            rss = max(r[2] for r in runs)
            label = f"{rows:,} steps" if ranks is None else f"{ranks} ranks x 100k x 2"
            print(f"{label:>22} {n:>12,} {total:>7.1f} {name:>24} {wall:>7.2f} {cpu:>6.2f} {rss:>9.0f}",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
