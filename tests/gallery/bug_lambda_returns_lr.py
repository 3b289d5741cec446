"""LambdaLR whose lambda returns the LR itself, not a factor: the effective LR is lr * lr, about 1e-6."""
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

config = {"lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 10, "epochs": 3}


def build_optimizer_and_scheduler(model, config):
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    lr, warmup = config["lr"], config["warmup_steps"]
    scheduler = LambdaLR(optimizer, lambda step: lr * min(1.0, (step + 1) / warmup))  # expect: lambda-returns-lr
    return optimizer, scheduler


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.GELU(), nn.Linear(16, 1))
optimizer, scheduler = build_optimizer_and_scheduler(model, config)
for epoch in range(config["epochs"]):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
