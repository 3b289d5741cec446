"""Cost of the live misuse checks per optimizer step: the engine alone, and inside a real loop.

    python scripts/bench_checks.py [--rounds 40] [--steps 500]

1. Engine alone: ``Checker.feed`` on a warm stream of (zero_grad, optimizer_step, scheduler_step)
   events, ns per optimizer-step event and per whole iteration.
2. Real loop (Linear(10->1), batch 32, SGD + StepLR, torch pinned to 1 thread) recorded by one
   ``lrdebug.trace()``, in adjacent blocks with the live checks on and off (order alternating), process
   CPU time; prints the median ns per optimizer step of each and of the per-pair difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lrdebug.rules import CODES, Checker
from lrdebug.tracefile.schema import Event


def _checker() -> Checker:
    checker = Checker()
    checker.register_optimizer(0, {"index": 0, "class": "SGD", "groups": [{"index": 0, "name": None}]})
    checker.register_scheduler(0, {"index": 0, "class": "StepLR", "module": "torch.optim.lr_scheduler",
                                   "optimizer": 0, "params": {"last_epoch": 0, "step_size": 30, "gamma": 0.1}})
    return checker


def engine_alone(rounds: int, steps: int) -> tuple[float, float]:
    """Median ns per optimizer_step event fed alone, and per iteration of three events."""
    per_step, per_iter = [], []
    for _ in range(rounds):
        steps_only, iteration = [], []
        for i in range(steps):
            lr = (0.1 * 0.1 ** (i // 90),)
            opt = Event("optimizer_step", 3 * i + 1, optimizer=0, step=i + 1, lrs=lr, grads=(1,), file="train.py",
                        line=23)
            steps_only.append(opt)
            iteration += [Event("zero_grad", 3 * i, optimizer=0, origin="optimizer", file="train.py", line=20), opt,
                          Event("scheduler_step", 3 * i + 2, optimizer=0, scheduler=0, step=i + 1, lrs=lr,
                                origin="user", file="train.py", line=24)]
        for events, out in ((steps_only, per_step), (iteration, per_iter)):
            feed = _checker().feed
            t0 = time.perf_counter_ns()
            for ev in events:
                feed(ev)
            out.append((time.perf_counter_ns() - t0) / steps)
    return statistics.median(per_step), statistics.median(per_iter)


def real_loop(rounds: int, steps: int) -> tuple[float, float, float]:
    """Median ns per step with the checks on and off, in adjacent blocks inside one trace."""
    import torch

    import lrdebug

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1)
    x, y = torch.randn(32, 10), torch.randn(32, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.9)
    out = Path(tempfile.mkdtemp(prefix="bench-checks-")) / "trace"

    # Every rule runs; ignoring all codes only keeps the toggling below from producing findings.
    with lrdebug.trace(optimizer, scheduler, out=out, summary=False, ignore=list(CODES)) as t:
        checker = t.recorder.checker

        def block(checks: bool) -> float:
            t.recorder.checker = checker if checks else None
            t0 = time.process_time_ns()
            for _ in range(steps):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                scheduler.step()
            return (time.process_time_ns() - t0) / steps

        block(True), block(False)  # warm up
        on, off, diff = [], [], []
        for k in range(rounds):
            if k % 2:
                a, b = block(True), block(False)
            else:
                b, a = block(False), block(True)
            on.append(a), off.append(b), diff.append(a - b)
        t.recorder.checker = checker
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
