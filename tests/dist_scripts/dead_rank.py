"""Two ranks launched by hand (no RANK variable: the rank comes from init_process_group, which runs
after the trace started). ``--die-rank R --die-after K``: rank R flushes its trace after step K and
exits hard two steps later (os._exit: no cleanup, no close); the other rank trains to the end."""

import argparse
import os

import torch
import torch.distributed as dist

import lrdebug

parser = argparse.ArgumentParser()
parser.add_argument("--rank", type=int, required=True)
parser.add_argument("--store", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--die-rank", type=int, default=0)
parser.add_argument("--die-after", type=int, default=5)
args = parser.parse_args()

# No periodic flush: what reaches the disk is exactly what dataframe() flushed, plus the close.
with lrdebug.trace(out=args.out, flush_seconds=3600) as t:
    dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        if args.rank == args.die_rank and step == args.die_after:
            t.dataframe()  # flushes what was recorded so far
        if args.rank == args.die_rank and step == args.die_after + 2:
            os._exit(3)
    dist.destroy_process_group()  # before the trace closes, as training scripts do
