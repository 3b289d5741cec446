"""DDP on two gloo ranks under torchrun; rank 1 dies (os._exit) after DIE_AFTER steps. Rank 0 then
fails in backward (gloo: connection closed) or is torn down by torchrun (SIGTERM). Each rank appends
"<step> <time_ns>" to LOG.<rank> after every step, "death <time_ns>" before dying."""

import os
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
log = open(f"{os.environ['LOG']}.{rank}", "a", buffering=1)
die_after = int(os.environ.get("DIE_AFTER", "40"))
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)
x, y = torch.randn(16, 8), torch.randn(16, 1)
for step in range(1, 10 * die_after):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    sched.step()
    log.write(f"{step} {time.time_ns()}\n")
    if rank == 1 and step == die_after:
        log.write(f"death {time.time_ns()}\n")
        os._exit(3)
    time.sleep(0.04)
dist.destroy_process_group()
