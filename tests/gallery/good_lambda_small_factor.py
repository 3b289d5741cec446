"""Small LambdaLR factors on purpose (warmup from 0.01, cosine down to 0.001) and a MultiplicativeLR decay."""
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

config = {"lr": 0.1, "warmup_steps": 8, "epochs": 3, "head_decay": 0.95}


def warmup_cosine(total, warmup, start=0.01, floor=0.001):
    def factor(step):
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
backbone, head = nn.Sequential(nn.Linear(10, 16), nn.ReLU()), nn.Linear(16, 1)
total = config["epochs"] * len(loader)
optimizer = torch.optim.SGD(backbone.parameters(), lr=config["lr"], momentum=0.9)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, config["warmup_steps"]))
head_optimizer = torch.optim.SGD(head.parameters(), lr=config["lr"])
head_scheduler = torch.optim.lr_scheduler.MultiplicativeLR(head_optimizer, lr_lambda=lambda epoch: config["head_decay"])

for epoch in range(config["epochs"]):
    for x, y in loader:
        optimizer.zero_grad()
        head_optimizer.zero_grad()
        loss = nn.functional.mse_loss(head(backbone(x)), y)
        loss.backward()
        optimizer.step()
        head_optimizer.step()
        scheduler.step()
    head_scheduler.step()
