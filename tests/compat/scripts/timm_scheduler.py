"""timm's CosineLRScheduler driving a plain AdamW loop as timm's train.py does: step_update() after
every optimizer step and step() at every epoch end; only the one its t_in_epochs names moves the LR.
argv: output JSON file, "updates" or "epochs" (t_in_epochs False / True)."""
import json
import sys

import cpu_torchvision  # noqa: F401,I001 - before timm imports torchvision
import torch

from timm.scheduler import CosineLRScheduler  # noqa: E402

per_update = sys.argv[2] == "updates"
torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
epochs, batches = 3, 5
scheduler = CosineLRScheduler(optimizer, t_initial=epochs * batches if per_update else epochs, warmup_t=2,
                              warmup_lr_init=1e-5, t_in_epochs=not per_update)
x, y = torch.randn(16, 8), torch.randn(16, 1)
used, updates = [], 0
for epoch in range(epochs):
    for _ in range(batches):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        updates += 1
        scheduler.step_update(num_updates=updates)
    scheduler.step(epoch + 1)
with open(sys.argv[1], "w") as f:
    json.dump(used, f)
