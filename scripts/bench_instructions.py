"""Instructions lrdebug adds per training iteration, counted by valgrind's callgrind.

CPU time on a shared VM drifts by 10-20% over seconds, more than the costs measured here; callgrind
counts the instructions the training thread executes, which is the same on every run. Each variant
runs in its own process under ``valgrind --tool=callgrind``: imports and warm-up iterations run
uninstrumented, then ``callgrind_control`` switches instrumentation on and only the measured
iterations (inside one ``functools.reduce`` call) are counted, on the main thread only (the writer
thread's Parquet encoding is off the training thread and is measured by bench.py's write rate).

The garbage collector is paused while the iterations are counted, in every variant. Under callgrind a
program runs ~50x slower, so the writer thread (which wakes every ``flush_seconds`` of wall time) runs
~50x more often per iteration than in a real run, and a collection its allocations make due can fall
on the training thread: counted, that made the same variant differ by ~5k instructions per iteration
from run to run. The hot path itself allocates no object that outlives its call.

    python scripts/bench_instructions.py            # loops a, b, c; a few minutes
    python scripts/bench_instructions.py --loops a  # one loop
    python scripts/bench_instructions.py --events   # added per optimizer step, scheduler step, zero_grad
    python scripts/bench_instructions.py --impl compiled   # one hot path (default: compiled and python)

Needs valgrind (callgrind_control comes with it). Prints instructions per iteration, plain and
traced under each hot path (compiled, and pure Python with LRDEBUG_PURE_PYTHON=1), and the ratio.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The measured part of every child: `call` warmed up untraced-or-traced, then counted inside one
# functools.reduce (callgrind's --toggle-collect) once the parent has switched instrumentation on.
MEASURE = r"""
if {variant!r} == "plain":
    import contextlib; ctx = contextlib.nullcontext()
else:
    ctx = lrdebug.trace(out=tempfile.mkdtemp() + "/t", summary=False,
                        ignore=tuple(CODES) if {variant!r} == "recording only" else ())
with ctx:
    for _ in range({warmup}):
        call()
    print("ready", flush=True)
    sys.stdin.readline()
    gc.disable()  # see the module's docstring
    functools.reduce(lambda a, b: call(), range({iters}), None)
    gc.enable()
"""

# One loop of bench.py per child.
CHILD = r"""
import functools, gc, sys, tempfile
sys.path.insert(0, {scripts!r})
import torch, lrdebug
from lrdebug.rules import CODES
import bench
torch.manual_seed(0)
call = bench.LOOPS[{loop!r}][1]()
""" + MEASURE

# One event at a time: a scalar parameter with a gradient, so the call itself is as cheap as torch makes it.
EVENT = r"""
import functools, gc, sys, tempfile
import torch, lrdebug
from lrdebug.rules import CODES
params = [torch.nn.Parameter(torch.zeros(1)) for _ in range({groups})]
for p in params:
    p.grad = torch.zeros(1)
opt = torch.optim.SGD([{{"params": [p]}} for p in params], lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10**9)
opt.step()
call = {{"optimizer step": lambda: opt.step(), "scheduler step": lambda: sched.step(),
        "zero_grad": lambda: opt.zero_grad()}}[{event!r}]
""" + MEASURE
EVENTS = (("optimizer step", 1), ("optimizer step", 10), ("scheduler step", 1), ("zero_grad", 1))
VARIANTS = ("plain", "traced", "recording only")
IMPLS = ("compiled", "python")  # the hot path: lrdebug/record/_hot.c, or LRDEBUG_PURE_PYTHON=1
ITERS = {"a": 400, "b": 10, "c": 200}


def count(loop: str, variant: str, iters: int, tmp: Path, code: str | None = None, impl: str = "compiled") -> int:
    """Instructions the main thread executed inside the measured iterations, with the ``impl`` hot path."""
    out = tmp / f"cg-{loop}-{variant}-{impl}".replace(" ", "_")
    if code is None:
        code = CHILD.format(scripts=str(Path(__file__).resolve().parent), loop=loop, variant=variant, iters=iters,
                             warmup=20)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONHASHSEED="0")
    env.pop("LRDEBUG_PURE_PYTHON", None)
    if impl == "python":
        env["LRDEBUG_PURE_PYTHON"] = "1"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                             "--toggle-collect=functools_reduce", f"--callgrind-out-file={out}.%p",
                             sys.executable, "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{loop}/{variant}: child did not start ({line!r})")
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait()
    main_thread = sorted(glob.glob(f"{out}.{proc.pid}-01"))
    if proc.returncode != 0 or not main_thread:
        raise RuntimeError(f"{loop}/{variant}: exit {proc.returncode}, no callgrind output")
    text = Path(main_thread[0]).read_text(errors="replace")
    totals = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    return int(totals.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", default="abc", help="which loops (default abc)")
    ap.add_argument("--iters", type=int, help="measured iterations per run (default a:400 b:10 c:200)")
    ap.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS,
                    help="hot paths to measure side by side (default: compiled and python)")
    ap.add_argument("--keep", type=Path, help="keep callgrind's files here (for callgrind_annotate)")
    ap.add_argument("--events", action="store_true",
                    help="instead: instructions added per optimizer step (1 and 10 groups), scheduler step, zero_grad")
    args = ap.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind not found: install it (Debian: apt-get install valgrind)")
        return 2
    if args.events:
        return events(args.iters or 1000, args.impl, args.keep)
    jobs = [(loop, "plain", "python") for loop in args.loops]
    jobs += [(loop, v, impl) for loop in args.loops for v in VARIANTS[1:] for impl in args.impl]
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        futures = {job: pool.submit(count, job[0], job[1], args.iters or ITERS[job[0]], where, impl=job[2])
                   for job in jobs}
        result = {job: f.result() / (args.iters or ITERS[job[0]]) for job, f in futures.items()}
    print(f"{'loop':<4} {'variant':<16} {'hot path':<9} {'instructions/iter':>18} {'added':>10} {'ratio':>7}")
    for loop in args.loops:
        plain = result[(loop, "plain", "python")]
        print(f"{loop:<4} {'plain':<16} {'-':<9} {plain:>18,.0f}")
        for v in VARIANTS[1:]:
            for impl in args.impl:
                n = result[(loop, v, impl)]
                print(f"{loop:<4} {v:<16} {impl:<9} {n:>18,.0f} {n - plain:>10,.0f} {n / plain:>7.3f}")
    return 0


def events(iters: int, impls: list[str], keep: Path | None = None) -> int:
    """Per event, against the same call untraced: the recorder alone (every finding code ignored) and
    with the live checks, under each hot path."""
    jobs = [(event, groups, "plain", "python") for event, groups in EVENTS]
    jobs += [(event, groups, v, impl) for event, groups in EVENTS for v in VARIANTS[1:] for impl in impls]
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        where = keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        futures = {job: pool.submit(count, f"{job[0]}-{job[1]}", job[2], iters, where,
                                    EVENT.format(groups=job[1], event=job[0], variant=job[2], iters=iters,
                                                 warmup=50), impl=job[3])
                   for job in jobs}
        result = {job: f.result() / iters for job, f in futures.items()}
    print(f"{'event':<28} {'untraced':>10}  " + "  ".join(f"{f'{v}, {impl}':>25}" for v in VARIANTS[:0:-1]
                                                           for impl in impls))
    for event, groups in EVENTS:
        plain = result[(event, groups, "plain", "python")]
        added = [result[(event, groups, v, impl)] - plain for v in VARIANTS[:0:-1] for impl in impls]
        name = f"{event}, {groups} group{'s' if groups > 1 else ''}" if event == "optimizer step" else event
        print(f"{name:<28} {plain:>10,.0f}  " + "  ".join(f"{a:>+25,.0f}" for a in added))
    return 0


if __name__ == "__main__":
    sys.exit(main())
