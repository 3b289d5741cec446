"""Overhead of lrdebug, measured side by side in one process.

Every figure alternates the variants in rounds (order flipped each round) and quotes the median
ratio with its spread (min-max of the per-round ratios). CPU time of the whole process is measured,
so the writer thread's Parquet encoding is counted. torch runs on one intra-op thread: two threads
on two shared cores make timings meaningless.

    python scripts/bench.py            # full run (a few minutes)
    python scripts/bench.py --quick    # smoke run (seconds), figures are noisy
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import lrdebug
from lrdebug.rules import CODES

torch.set_num_threads(1)
clock = time.process_time_ns


# ------------------------------------------------------------------------------ loops
def training_step(model, opt, sched, x, y):
    """One iteration as every benchmark loop runs it: zero_grad, forward, backward, step, scheduler."""

    def step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()

    return step


def loop_tiny():
    """(a) Linear(10->1), batch 32, SGD, StepLR stepped per iteration."""
    model = torch.nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000, gamma=0.5)
    x, y = torch.randn(32, 10), torch.randn(32, 1)
    return training_step(model, opt, sched, x, y)


def loop_mlp():
    """(b) MLP 3 x Linear(512), batch 64, Adam, LambdaLR per iteration."""
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 512))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    x, y = torch.randn(64, 512), torch.randn(64, 512)
    return training_step(model, opt, sched, x, y)


def loop_groups():
    """(c) 10 param groups (one per Linear(32->32)), AdamW, CosineAnnealingLR per iteration."""
    layers = [torch.nn.Linear(32, 32) for _ in range(10)]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW([{"params": m.parameters(), "lr": 1e-3 * (i + 1)} for i, m in enumerate(layers)])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100_000)
    x, y = torch.randn(32, 32), torch.randn(32, 32)
    return training_step(model, opt, sched, x, y)


LOOPS = {"a": ("tiny Linear(10->1), SGD, StepLR", loop_tiny),
         "b": ("MLP 3x512, Adam, LambdaLR", loop_mlp),
         "c": ("10 groups, AdamW, cosine", loop_groups)}


# ------------------------------------------------------------------------------ variants
class Variants:
    """Context-manager factories; each makes a fresh trace directory per round."""

    count = 0

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def _out(self) -> Path:
        Variants.count += 1
        return self.tmp / f"t{Variants.count}"

    def plain(self):
        return contextlib.nullcontext()

    def traced(self, **kwargs):
        return lrdebug.trace(out=self._out(), summary=False, **kwargs)

    def recording_only(self):
        """Recording without live checks: the micro figures measure the recorder alone."""
        return lrdebug.trace(out=self._out(), summary=False, ignore=tuple(CODES))

    def no_checks(self):
        return lrdebug.trace(out=self._out(), summary=False, ignore=tuple(CODES))

    def profiler(self):
        return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])


def compare(step, variants: dict, iters: int, rounds: int, include_exit: bool = True) -> dict[str, list[int]]:
    """CPU ns per round for each variant, alternating order each round. With ``include_exit`` the
    time to close the trace (final flush, merge, status) is charged to the round."""
    names = list(variants)
    times = {n: [] for n in names}
    for _ in range(20):  # warm up allocator and caches
        step()
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            ctx = variants[name]()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ctx.__enter__()
                t0 = clock()
                for _ in range(iters):
                    step()
                if include_exit:
                    ctx.__exit__(None, None, None)
                times[name].append(clock() - t0)
                if not include_exit:
                    ctx.__exit__(None, None, None)
    return times


def ratio(times, a, b) -> tuple[float, float, float]:
    rs = [x / y for x, y in zip(times[a], times[b])]
    return statistics.median(rs), min(rs), max(rs)


def fmt_ratio(r) -> str:
    return f"{r[0]:.3f}x (spread {r[1]:.3f}-{r[2]:.3f})"


# ------------------------------------------------------------------------------ micro figures
def added_ns_per_call(make_call, calls: int, rounds: int, tmp: Path) -> float:
    """Median extra CPU ns per call of `make_call()` traced vs untraced."""
    call = make_call()
    variants = Variants(tmp)
    t = compare(call, {"plain": variants.plain, "traced": variants.recording_only}, calls, rounds,
                include_exit=False)  # the per-call cost; writing is measured on its own below
    diffs = [(x - y) / calls for x, y in zip(t["traced"], t["plain"])]
    return statistics.median(diffs)


def opt_step_call(groups: int):
    def make():
        params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
        for p in params:
            p.grad = torch.zeros(1)
        opt = torch.optim.SGD([{"params": [p]} for p in params], lr=0.1)
        return opt.step
    return make


def sched_step_call():
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10**9)
    opt.step()  # PyTorch warns about a scheduler stepped first
    return sched.step


def zero_grad_call():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    return opt.zero_grad


def write_rate(rows: int, groups: int, tmp: Path) -> tuple[float, float]:
    """Sustained rows/s through the writer and bytes per row on disk.

    As in a run: the step buffer is drained in batches of the recorder's default ``flush_rows``
    steps, each batch expanded to columns, Arrow-encoded and written as a Parquet part (zstd), and
    the parts merged as the writer merges them; closing (last merge, status file) is timed too.
    """
    from lrdebug.record.callsites import FRAMEWORK_SITES, SITES
    from lrdebug.tracefile.columns import STEP_FIELDS, columns_from_rows
    from lrdebug.tracefile.writer import FLUSH_ROWS, PartWriter

    lrs = tuple(0.1 * (i + 1) for i in range(groups))
    grads = (1,) * groups
    steps = rows // groups
    rng = random.Random(0)  # realistic-ish values: timings jitter, LR decays
    buf = []  # the recorder's step buffer: STEP_FIELDS values per step, flat
    for i in range(steps):
        buf += ("optimizer_step", i, i * 1_000_000 + rng.randrange(200_000), 20_000 + rng.randrange(5_000), 0, i + 1,
                0, tuple(v * (1 - i / steps) for v in lrs), grads, 1_000_000 + rng.randrange(200_000), None, None)
    if not SITES:
        SITES.append(("train.py", 10, "<module>"))
    batch = FLUSH_ROWS * STEP_FIELDS
    pending = [buf[k:k + batch] for k in range(0, len(buf), batch)][::-1]
    out = tmp / "rate"

    def drain():
        if not pending:
            return None
        return columns_from_rows(pending.pop(), [], 0, 0, SITES, FRAMEWORK_SITES)

    w = PartWriter(out, drain, lambda: {"schema_version": "1.0"}, lambda: 0, "bench", print)
    t0 = time.perf_counter()
    while pending:
        w.flush()
    w.close(None, [])
    dt = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
    return steps * groups / dt, size / (steps * groups)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few rounds: checks the script works, figures are noisy")
    ap.add_argument("--micro", action="store_true", help="only the per-call and writer figures")
    args = ap.parse_args(argv)
    q = args.quick
    rounds = 3 if q else 41  # this kind of VM drifts by 10-20% over seconds: many short alternating rounds
    iters = {"a": 200 if q else 1000, "b": 10 if q else 40, "c": 50 if q else 300}
    print(f"lrdebug {lrdebug.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, rounds {rounds}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        v = Variants(tmp)
        for key, (title, make) in ({} if args.micro else LOOPS).items():
            step = make()
            variants = {"plain": v.plain, "traced": v.traced}
            if key in "ab":
                variants["profiler"] = v.profiler
            if key == "a":
                variants["no_checks"] = v.no_checks
            t = compare(step, variants, iters[key], rounds)
            per_iter = statistics.median(t["plain"]) / iters[key] / 1000
            rows.append((f"({key}) {title}: untraced time per iteration", f"{per_iter:.1f} us"))
            rows.append((f"({key}) traced / untraced", fmt_ratio(ratio(t, "traced", "plain"))))
            if "profiler" in t:
                added = statistics.median([x - y for x, y in zip(t["traced"], t["plain"])])
                added_prof = statistics.median([x - y for x, y in zip(t["profiler"], t["plain"])])
                rows.append((f"({key}) torch.profiler / untraced", fmt_ratio(ratio(t, "profiler", "plain"))))
                rows.append((f"({key}) profiler added time / lrdebug added time",
                             f"{added_prof / added:.1f}x" if added > 0 else
                             f"n/a: lrdebug added {added / 1e6:.1f} ms per round, below this run's noise"))
            if "no_checks" in t:
                rows.append((f"({key}) live checks on / off", fmt_ratio(ratio(t, "traced", "no_checks"))))
            if key == "a":  # closing a trace costs milliseconds once per run: the per-iteration cost alone
                steady = compare(step, {"plain": v.plain, "traced": v.traced, "recording": v.recording_only},
                                 iters[key], rounds, include_exit=False)
                rows.append((f"({key}) steady state (closing excluded): traced / untraced",
                             fmt_ratio(ratio(steady, "traced", "plain"))))
                rows.append((f"({key}) steady state: recording alone / untraced",
                             fmt_ratio(ratio(steady, "recording", "plain"))))
        calls = 500 if q else 5000
        mr = 3 if q else 21
        rows.append(("micro figures below: recording alone (checks off)", ""))
        rows.append(("added per optimizer step, 1 group", f"{added_ns_per_call(opt_step_call(1), calls, mr, tmp):.0f} ns"))
        rows.append(("added per optimizer step, 10 groups", f"{added_ns_per_call(opt_step_call(10), calls, mr, tmp):.0f} ns"))
        rows.append(("added per scheduler step (StepLR)", f"{added_ns_per_call(sched_step_call, calls, mr, tmp):.0f} ns"))
        rows.append(("added per zero_grad", f"{added_ns_per_call(zero_grad_call, calls, mr, tmp):.0f} ns"))
        write_rate(20_000, 1, tmp / "warm")  # first use imports pandas inside pyarrow: not part of the rate
        rate, size = write_rate(20_000 if q else 1_000_000, 1, tmp)
        rows.append(("rows written per second (1 group)", f"{rate / 1e6:.2f} M rows/s"))
        rows.append(("bytes on disk per optimizer step per group (zstd)", f"{size:.1f} B"))
        rate, size = write_rate(20_000 if q else 1_000_000, 10, tmp / "g10")
        rows.append(("rows written per second (10 groups)", f"{rate / 1e6:.2f} M rows/s"))
        rows.append(("bytes on disk per step per group, 10 groups", f"{size:.1f} B"))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
