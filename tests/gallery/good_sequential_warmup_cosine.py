"""Linear warmup then cosine decay with SequentialLR, stepped per batch."""
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
epochs, warmup = 4, 5
total = epochs * len(loader)
scheduler = SequentialLR(optimizer, [LinearLR(optimizer, start_factor=0.01, total_iters=warmup),
                                     CosineAnnealingLR(optimizer, T_max=total - warmup)], milestones=[warmup])

for epoch in range(epochs):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
