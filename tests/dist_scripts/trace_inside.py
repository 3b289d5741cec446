"""A torchrun script that calls lrdebug.trace() itself, after init_process_group, with the default
output directory; ``--lr-on-rank R=LR`` starts rank R with another learning rate."""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import lrdebug

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--lr-on-rank", default=None)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
lr = args.lr
if args.lr_on_rank and int(args.lr_on_rank.split("=")[0]) == rank:
    lr = float(args.lr_on_rank.split("=")[1])

torch.manual_seed(0)
model = DDP(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=lr)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=args.steps)
x, y = torch.randn(16, 8), torch.randn(16, 1)

with lrdebug.trace(optimizer, scheduler) as t:
    for _ in range(args.steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
print(f"TRACE {rank} {t.path}", flush=True)
dist.destroy_process_group()
