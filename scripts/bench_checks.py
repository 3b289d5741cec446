"""Cost of the live misuse checks per optimizer step: the engine alone, and inside a real loop.

    python scripts/bench_checks.py [--rounds 40] [--steps 500]

1. Engine alone: ``Checker.feed`` on a warm stream of (zero_grad, optimizer_step, scheduler_step)
   events, ns per optimizer-step event and per whole iteration.
2. Real loop (Linear(10->1), batch 32, SGD + StepLR, torch pinned to 1 thread) recorded by
   ``lrdebug.trace()`` with the live checks on and off, in adjacent pairs (order alternating), process
   CPU time; prints the median ns per optimizer step of each and of the per-pair difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lrdebug.checks import Checker
from lrdebug.events import Event


def engine_alone(rounds: int, steps: int) -> tuple[float, float]:
    checker = Checker()
    checker.register_optimizer(0, {"index": 0, "class": "SGD", "groups": [{"index": 0, "name": None}]})
    checker.register_scheduler(0, {"index": 0, "class": "StepLR", "module": "torch.optim.lr_scheduler",
                                   "optimizer": 0, "params": {"last_epoch": 0, "step_size": 30, "gamma": 0.1}})
    seq = 0
    feed = checker.feed
    per_step, per_iter = [], []
    for _ in range(rounds):
        zero, opt, sched = [], [], []
        for i in range(steps):
            lrs = (0.1 * 0.1 ** ((seq // 3) // 90),)
            zero.append(Event("zero_grad", seq, optimizer=0, origin="optimizer", file="train.py", line=20))
            opt.append(Event("optimizer_step", seq + 1, optimizer=0, step=i + 1, lrs=lrs, grads=(1,), file="train.py",
                             line=23))
            sched.append(Event("scheduler_step", seq + 2, optimizer=0, scheduler=0, step=i + 1, lrs=lrs,
                               origin="user", file="train.py", line=24))
            seq += 3
        t_opt = 0
        t0 = time.perf_counter_ns()
        for z, o, s in zip(zero, opt, sched):
            feed(z)
            t1 = time.perf_counter_ns()
            feed(o)
            t_opt += time.perf_counter_ns() - t1
            feed(s)
        per_iter.append((time.perf_counter_ns() - t0) / steps)
        per_step.append(t_opt / steps)
    return statistics.median(per_step), statistics.median(per_iter)


def real_loop(rounds: int, steps: int) -> tuple[float, float, float]:
    import torch

    import lrdebug

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1)
    x, y = torch.randn(32, 10), torch.randn(32, 1)
    root = Path(tempfile.mkdtemp(prefix="bench-checks-"))

    def run(checks: bool, k: int) -> float:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.9)
        with lrdebug.trace(optimizer, scheduler, out=root / f"{k}-{checks}", summary=False) as t:
            if not checks:
                t.recorder.checker = None
            t0 = time.process_time_ns()
            for _ in range(steps):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                scheduler.step()
            return (time.process_time_ns() - t0) / steps

    run(True, -1), run(False, -1)  # warm up
    on, off, diff = [], [], []
    for k in range(rounds):
        if k % 2:
            a, b = run(True, k), run(False, k)
        else:
            b, a = run(False, k), run(True, k)
        on.append(a), off.append(b), diff.append(a - b)
    return statistics.median(on), statistics.median(off), statistics.median(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    step_ns, iter_ns = engine_alone(args.rounds, args.steps)
    print(f"engine alone: {step_ns:8.0f} ns per optimizer_step event, {iter_ns:8.0f} ns per iteration "
          "(zero_grad + optimizer_step + scheduler_step)")
    on, off, diff = real_loop(args.rounds, args.steps)
    print(f"real loop (Linear 10->1, SGD + StepLR, 1 thread), ns per optimizer step, median of {args.rounds} pairs:")
    print(f"  checks on {on:10.0f}   checks off {off:10.0f}   difference {diff:8.0f} ({diff / off:+.1%})")


if __name__ == "__main__":
    main()
