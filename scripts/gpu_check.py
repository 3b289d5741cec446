"""Check lrdebug on a CUDA machine in one command: no device synchronisation, cuda_ns recorded.

    python scripts/gpu_check.py                # needs CUDA; elsewhere prints "CUDA not available", exits 0
    python scripts/gpu_check.py --device cpu   # the same loop and checks on CPU (no sync, no cuda_ns)

The loop: an MLP under autocast, ``Adam(fused=True)`` with a tensor LR on the device, a LambdaLR
warmup, a GradScaler, and one iteration forced to overflow (the fused kernel skips that update). It
runs untraced, under a plain ``lrdebug.trace()``, with ``cuda_timing=True``, and with ``sample_updates=10`` too, the
variants alternating in rounds, every loop under ``torch.cuda.set_sync_debug_mode("error")`` so any
device synchronisation raises. Prints the overhead ratios traced/untraced (median, spread).

Exit status: 0 all checks pass; 1 a check failed (a sync error, a trace incomplete or wrong);
2 the untraced loop synchronises by itself (a torch change: the check cannot say anything).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import lrdebug
from lrdebug.tracefile import read_trace

BASE_LR = 1e-3
WARMUP = 20  # LambdaLR warmup, in iterations
SAMPLE = 10  # sample_updates of the sampled variant
INF_ITER = 5  # this iteration's loss is made infinite: GradScaler must skip it
INIT_SCALE = 2.0 ** 10  # low enough that no other iteration overflows in float16


def scheduled_lr(iteration: int) -> float:
    """The LR iteration ``iteration`` (from 1) uses under the LambdaLR warmup."""
    return BASE_LR * min(1.0, iteration / WARMUP)


class Loop:
    """A fresh model, optimizer, scheduler and scaler; ``run(n)`` trains n iterations."""

    def __init__(self, device: str, tensor_lr: bool = True) -> None:
        torch.manual_seed(0)
        width = 1024 if device == "cuda" else 64
        layers = [torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
                  torch.nn.Linear(width, width)]
        self.model = torch.nn.Sequential(*layers).to(device)
        self.numel = sum(p.numel() for p in self.model.parameters())
        # a tensor LR on the device (the fused kernel reads it there), or the usual float
        lr = torch.tensor(BASE_LR, device=device) if tensor_lr else BASE_LR
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / WARMUP))
        self.scaler = torch.amp.GradScaler(device, init_scale=INIT_SCALE)
        self.x = torch.randn(256, width, device=device)
        self.y = torch.randn(256, width, device=device)
        self.device = device
        self.dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def run(self, iterations: int) -> None:
        for i in range(1, iterations + 1):
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device, dtype=self.dtype):
                loss = torch.nn.functional.mse_loss(self.model(self.x), self.y)
            if i == INF_ITER:
                loss = loss * math.inf
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()

    def skips(self) -> int:
        """GradScaler halves its scale at each skip (growth needs 2000 clean steps): count them."""
        return round(math.log2(INIT_SCALE / self.scaler.get_scale()))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def sync_errors(device: str):
    """Every synchronising CUDA call raises while active."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def timed_run(device: str, iterations: int, trace_kwargs: dict | None, out: Path | None,
              tensor_lr: bool = True) -> tuple[float, Loop]:
    """Seconds for the loop (synchronised before and after); traced when ``trace_kwargs`` is given."""
    loop = Loop(device, tensor_lr)
    ctx = lrdebug.trace(out=out, summary=False, **trace_kwargs) if trace_kwargs is not None else contextlib.nullcontext()
    with ctx:
        synchronize(device)
        t0 = time.perf_counter()
        with sync_errors(device):
            loop.run(iterations)
        synchronize(device)
        seconds = time.perf_counter() - t0
    return seconds, loop


def check_trace(path: Path, loop: Loop, iterations: int, device: str, options: dict) -> list[str]:
    """What is wrong with a trace of ``Loop.run(iterations)``: an empty list when nothing is."""
    problems = []
    trace = read_trace(path)
    status = trace.status.get(0, {})
    if not status.get("complete"):
        problems.append(f"trace incomplete: {status.get('reason')}")
    df = trace.to_pandas().sort_values("seq")
    rows = df[df.event.isin(["optimizer_step", "optimizer_step_skipped"])].reset_index(drop=True)
    if len(rows) != iterations:
        return problems + [f"{len(rows)} optimizer step rows for {iterations} iterations"]
    skipped = rows.index[rows.event == "optimizer_step_skipped"] + 1
    if INF_ITER not in skipped or len(skipped) != loop.skips():
        problems.append(f"skipped iterations {list(skipped)}; GradScaler skipped {loop.skips()} incl. {INF_ITER}")
    applied = rows[rows.event == "optimizer_step"]
    if list(applied.step) != list(range(1, len(applied) + 1)):
        problems.append("applied steps are not numbered 1, 2, 3, ...")
    expected_lr = [scheduled_lr(i) for i in range(1, iterations + 1)]
    bad_lr = [i + 1 for i, (a, b) in enumerate(zip(rows.lr, expected_lr)) if not math.isclose(a, b, rel_tol=1e-5)]
    if bad_lr:
        problems.append(f"recorded LR differs from the schedule at iterations {bad_lr[:5]}")
    sampled = "sample_updates" in options
    if device == "cuda" and options.get("cuda_timing"):
        cuda_ns = rows.cuda_ns
        if cuda_ns.isna().any() or not (cuda_ns.dropna() > 0).all():
            problems.append(f"cuda_ns missing or not positive on {int((cuda_ns.isna() | (cuda_ns <= 0)).sum())} rows")
    elif not options.get("cuda_timing") and rows.cuda_ns.notna().any():
        problems.append("cuda_ns recorded without cuda_timing")
    if sampled:
        first = rows.iloc[0]
        sign_update = scheduled_lr(1) * math.sqrt(loop.numel)  # Adam's first step moves each element by ~lr
        if not (0.99 * sign_update <= first.update_norm <= 1.0001 * sign_update):
            problems.append(f"first sampled update_norm {first.update_norm:.6g}, expected ~{sign_update:.6g}")
        if not (first.grad_norm > 0 and math.isfinite(first.grad_norm)):
            problems.append(f"first sampled grad_norm {first.grad_norm}")
        want = [k for k in range(1, iterations + 1) if (k - 1) % SAMPLE == 0]
        got = list(rows.index[rows.update_norm.notna()] + 1)
        if [k for k in got if k < INF_ITER] != [k for k in want if k < INF_ITER]:
            problems.append(f"sampled iterations {got[:6]}..., expected {want[:6]}...")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=300, help="iterations per run (default 300)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default 5)")
    ap.add_argument("--out", type=Path, help="directory for the traces (default: a temporary one)")
    ap.add_argument("--lr", choices=["tensor", "float"], default="tensor",
                    help="the LR as a tensor on the device (default) or a plain float")
    args = ap.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: nothing to check (run this on a CUDA machine, or use --device cpu)")
        return 0
    if args.steps <= INF_ITER:
        ap.error(f"--steps must be more than {INF_ITER}")
    if device == "cpu":
        torch.set_num_threads(1)  # a dry run on shared cores: more threads only add noise
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, lrdebug {lrdebug.__version__}, "
          f"{args.steps} iterations x {args.rounds} rounds, {args.lr} LR")
    variants = {"untraced": None, "traced": {}, "traced+cuda_timing": {"cuda_timing": True},
                "traced+sampled": {"cuda_timing": True, "sample_updates": SAMPLE}}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        times: dict[str, list[float]] = {v: [] for v in variants}
        problems: list[str] = []
        for r in range(args.rounds + 1):  # round 0 warms up (allocator, kernels) and is not timed
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for variant in order:
                out = root / f"{variant.replace('+', '-')}-{r}" if variants[variant] is not None else None
                try:
                    seconds, loop = timed_run(device, args.steps, variants[variant], out, args.lr == "tensor")
                except Exception:  # noqa: BLE001 - report where the sync happened
                    traceback.print_exc()
                    if variant == "untraced":
                        print("the untraced loop itself synchronises (torch): this check cannot judge lrdebug")
                        return 2
                    print(f"FAIL: {variant} raised (a device synchronisation inside lrdebug?)")
                    return 1
                if r > 0:
                    times[variant].append(seconds)
                if out is not None and r == args.rounds:
                    problems += [f"{variant}: {p}" for p in
                                 check_trace(out, loop, args.steps, device, variants[variant])]
    per_iter = statistics.median(times["untraced"]) / args.steps * 1e3
    print(f"untraced: {per_iter:.3f} ms per iteration")
    for variant in list(variants)[1:]:
        ratios = [t / u for t, u in zip(times[variant], times["untraced"])]
        print(f"overhead traced/untraced, {variant}: {statistics.median(ratios):.3f}x "
              f"(spread {min(ratios):.3f}-{max(ratios):.3f})")
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        return 1
    checks = "no device synchronisation, " if device == "cuda" else ""
    print(f"PASS: {checks}trace complete, GradScaler skip recorded, LR as scheduled"
          + (", cuda_ns positive" if device == "cuda" else "") + ", sampled update of Adam's first step ~ lr")
    return 0


if __name__ == "__main__":
    sys.exit(main())
