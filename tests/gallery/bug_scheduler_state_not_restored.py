"""A resume that restores the model and the optimizer but not the scheduler: warmup starts again."""
import io

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def build():
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()  # expect: scheduler-state-not-restored step=1


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model, optimizer, scheduler = build()
train(model, optimizer, scheduler, epochs=2)
checkpoint = io.BytesIO()
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)

# --- the job restarts
checkpoint.seek(0)
state = torch.load(checkpoint)
model, optimizer, scheduler = build()
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optimizer"])
train(model, optimizer, scheduler, epochs=1)
