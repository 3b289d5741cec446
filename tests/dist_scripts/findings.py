"""A 2-rank DDP job (gloo, CPU) whose ranks record findings of every severity but error:
the scheduler steps once before the first optimizer step (warning), a second optimizer's LR is
written by hand (info), and the cosine schedule stops far short of its end (info).
``--rank1-extra`` makes rank 1 alone step the scheduler twice in one iteration (a second warning)."""

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--rank1-extra", action="store_true")
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DDP(torch.nn.Linear(8, 1))
head = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
manual = torch.optim.SGD(head.parameters(), lr=0.05)
x, y = torch.randn(16, 8), torch.randn(16, 1)

scheduler.step()  # before any optimizer step
for step in range(args.steps):
    optimizer.zero_grad()
    manual.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y) + head(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    manual.step()
    scheduler.step()
    if args.rank1_extra and rank == 1 and step == 2:
        scheduler.step()
    for g in manual.param_groups:  # a hand-written decay
        g["lr"] = g["lr"] * 0.9
dist.destroy_process_group()
