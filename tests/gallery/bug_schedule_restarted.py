"""configure_optimizers() is called inside the epoch loop: a new optimizer and warmup schedule every epoch."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

cfg = {"lr": 3e-3, "warmup_steps": 6, "epochs": 3}


def configure_optimizers(model, cfg):
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])

    def warmup(step):
        return min(1.0, (step + 1) / cfg["warmup_steps"])

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)  # expect: schedule-restarted
    return optimizer, scheduler


def train_one_epoch(model, loader, cfg):
    optimizer, scheduler = configure_optimizers(model, cfg)
    model.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
    return total / len(loader)


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
for epoch in range(cfg["epochs"]):
    train_loss = train_one_epoch(model, loader, cfg)
