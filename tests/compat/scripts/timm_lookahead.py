"""timm's real Lookahead around AdamW, a LambdaLR warmup built on the wrapper, the loop stepping only
the wrapper; writes the LR of every step (as the inner optimizer saw it) to the JSON file argv[1]."""
import json
import sys

import cpu_torchvision  # noqa: F401,I001 - before timm imports torchvision
import torch

from timm.optim import Lookahead  # noqa: E402

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-3), alpha=0.5, k=3)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
x, y = torch.randn(32, 8), torch.randn(32, 1)
used = []
for _ in range(12):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    used.append(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
with open(sys.argv[1], "w") as f:
    json.dump(used, f)
