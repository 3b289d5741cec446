"""Data-parallel training on CPU (gloo): two ranks, DDP, SGD with OneCycleLR.

Run it under lrdebug on every rank, no edit needed:

    torchrun --standalone --nproc-per-node 2 -m lrdebug run --out runs/ddp examples/ddp_train.py
    lrdebug report runs/ddp

Each rank writes its own partition (runs/ddp/rank=0/, rank=1/); the report merges them and
compares the ranks. ``--lr-on-rank R=LR`` starts rank R with another LR, a misconfiguration the
report names as `rank-divergence`.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--lr-on-rank", default=None, metavar="R=LR", help="give rank R another LR")
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
lr = args.lr
if args.lr_on_rank:
    r, value = args.lr_on_rank.split("=")
    if int(r) == rank:
        lr = float(value)

model = DDP(torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=args.steps)
generator = torch.Generator().manual_seed(1000 + rank)  # each rank sees its own shard of data

for step in range(args.steps):
    x = torch.randn(32, 16, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    scheduler.step()
    if rank == 0 and (step + 1) % 10 == 0:
        print(f"step {step + 1}: loss {loss.item():.4f}", flush=True)

dist.destroy_process_group()
print(f"rank {rank} of {os.environ.get('WORLD_SIZE')} done", flush=True)
