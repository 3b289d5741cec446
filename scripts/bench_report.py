"""Time and peak memory of ``lrdebug report`` on large synthetic traces.

    python scripts/bench_report.py                 # 1M and 10M optimizer_step rows, traces under /tmp
    python scripts/bench_report.py --rows 1000000 --pandas

Each trace is made once by ``scripts/make_big_trace.py`` (an iteration records a zero_grad, an
optimizer step and a scheduler step, so 10M optimizer_step rows are 30M rows) and kept for later
runs. Each measurement is a fresh ``lrdebug report`` process; its wall time, CPU time and peak RSS
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


def trace_for(rows: int, where: Path) -> Path:
    out = where / f"lrdebug-bench-{rows}"
    if not (out / "rank=0" / "_lrdebug_status.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_big_trace.py"), "--rows", str(rows), str(out)],
                       check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000],
                    help="optimizer_step rows of each trace")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the traces are kept")
    ap.add_argument("--pandas", action="store_true", help="also measure lrdebug.load() of the whole trace")
    args = ap.parse_args()

    print(f"{'trace':>22} {'rows':>12} {'MiB':>7} {'command':>24} {'wall s':>7} {'CPU s':>6} {'peak MiB':>9}")
    for rows in args.rows:
        path = trace_for(rows, args.dir)
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
            print(f"{f'{rows:,} steps':>22} {n:>12,} {total:>7.1f} {name:>24} {wall:>7.2f} {cpu:>6.2f} {rss:>9.0f}",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
