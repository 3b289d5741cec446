"""Bytes on disk per optimizer step and param group, measured on a recorded run (not a test).

    .venv/bin/python tests/dist_scripts/trace_size.py --steps 131072 --groups 2 /tmp/lrdebug-size

A typical loop: AdamW with decay / no-decay groups, linear warmup then cosine (LambdaLR) stepped
every batch, zero_grad every batch. Prints rows and bytes, and the extrapolation to 1,024 ranks
x 1M steps.
"""

import argparse
import math
from pathlib import Path

import torch

import lrdebug

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--steps", type=int, default=131072)
parser.add_argument("--groups", type=int, default=2)
parser.add_argument("--flush-seconds", type=float, default=3600, help="3600: parts of flush_rows (16,384) steps")
args = parser.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
layers = [torch.nn.Linear(4, 4) for _ in range(args.groups)]
groups = [{"params": layer.parameters(), "weight_decay": 0.1 if g == 0 else 0.0} for g, layer in enumerate(layers)]
optimizer = torch.optim.AdamW(groups, lr=3e-4)
warmup = max(1, args.steps // 100)


def schedule(step: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
x = torch.randn(8, 4)
with lrdebug.trace(optimizer, scheduler, out=args.out, summary=False, flush_seconds=args.flush_seconds):
    for _ in range(args.steps):
        optimizer.zero_grad()
        sum(layer(x).square().mean() for layer in layers).backward()
        optimizer.step()
        scheduler.step()

root = Path(args.out)
parts = sorted(root.glob("rank=*/part-*.parquet"))
size = sum(p.stat().st_size for p in parts)
rows = len(lrdebug.load(root))
per = size / (args.steps * args.groups)
print(f"{args.steps} steps x {args.groups} groups: {rows} rows in {len(parts)} parts, {size} bytes")
print(f"{size / rows:.2f} bytes per row; {per:.2f} bytes per optimizer step per group (all events of a step)")
print(f"1,024 ranks x 1M steps x {args.groups} groups: {per * 1024 * 1e6 * args.groups / 2**30:.0f} GiB "
      f"({per * 1e6 * args.groups / 2**20:.0f} MiB per rank)")
