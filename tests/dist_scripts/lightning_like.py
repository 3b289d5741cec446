"""Two ranks the way Lightning's DDP launcher starts them: this process is rank 0 and re-runs the
script as a subprocess for rank 1 (with LOCAL_RANK=1), then ends without waiting for it. Rank 1 is
slower to finish (``--rank1-delay`` seconds after training), so its partition appears only after
rank 0 has closed its own. Rank 1 alone steps its scheduler twice in one iteration (a warning)."""

import os
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist

delay = float(sys.argv[sys.argv.index("--rank1-delay") + 1]) if "--rank1-delay" in sys.argv else 0.0
if "LOCAL_RANK" not in os.environ:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    os.environ.update(RANK="0", LOCAL_RANK="0")
    subprocess.Popen([sys.executable, *sys.argv], env={**os.environ, "RANK": "1", "LOCAL_RANK": "1"})
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
for step in range(4):
    optimizer.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    if rank == 1 and step == 1:
        scheduler.step()
dist.destroy_process_group()
if rank == 1:
    time.sleep(delay)
