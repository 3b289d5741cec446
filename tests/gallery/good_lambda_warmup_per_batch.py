"""HF-style linear warmup then linear decay (LambdaLR per batch); the very first LR is 0.0."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
epochs, warmup = 3, 6
total = epochs * len(loader)


def lr_lambda(step):
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / (total - warmup))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

for epoch in range(epochs):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
