"""nanoGPT style: no scheduler object; the LR is computed and written into param_groups each step."""
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4)
max_lr, min_lr, warmup, epochs = 6e-4, 6e-5, 4, 3
total = epochs * len(loader)


def get_lr(it):
    if it < warmup:
        return max_lr * (it + 1) / warmup
    ratio = (it - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


it = 0
for epoch in range(epochs):
    for x, y in loader:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()  # expect: lr-changed-outside-scheduler step=2
        it += 1
