"""A manual linear warmup written into param_groups while a per-batch cosine scheduler also runs."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
base_lr, warmup, epochs = 0.1, 10, 3
optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))

step = 0
for epoch in range(epochs):
    for x, y in loader:
        if step < warmup:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * (step + 1) / warmup
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()  # expect: lr-conflict step=2; expect: lr-changed-outside-scheduler step=1
        scheduler.step()
        step += 1
