"""A resume that builds the scheduler after optimizer.load_state_dict(): the restored LR is overwritten."""
import io

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def warmup(step):
    return min(1.0, (step + 1) / 20)


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
for x, y in loader:
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    scheduler.step()
checkpoint = io.BytesIO()
torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, checkpoint)

# --- resume: load the optimizer first, then build the scheduler (wrong order)
checkpoint.seek(0)
state = torch.load(checkpoint)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
optimizer.load_state_dict(state["optimizer"])
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
scheduler.load_state_dict(state["scheduler"])
for epoch in range(2):
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()  # expect: scheduler-state-not-restored step=1
