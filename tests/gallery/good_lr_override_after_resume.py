"""Resume, then lower the LR for fine-tuning by rescaling the scheduler's base_lrs along with param_groups."""
import io

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WARMUP, TOTAL = 5, 48


def warmup_linear_decay(step):
    return min((step + 1) / WARMUP, max(0.0, (TOTAL - step) / (TOTAL - WARMUP)))


def build():
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay)
    return model, optimizer, scheduler


def set_base_lr(optimizer, scheduler, base_lr):
    """Move the schedule to a new base LR: the current LR and every later one scale together."""
    for group, old_base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] *= base_lr / old_base
    scheduler.base_lrs = [base_lr for _ in optimizer.param_groups]


def train(model, optimizer, scheduler, loader, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model, optimizer, scheduler = build()
train(model, optimizer, scheduler, loader, epochs=2)
checkpoint = io.BytesIO()
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict()}, checkpoint)

# --- later: resume from the checkpoint and fine-tune at a lower LR
checkpoint.seek(0)
state = torch.load(checkpoint)
model, optimizer, scheduler = build()
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optimizer"])
scheduler.load_state_dict(state["scheduler"])
set_base_lr(optimizer, scheduler, 1e-4)  # fine-tune lower
train(model, optimizer, scheduler, loader, epochs=2)
