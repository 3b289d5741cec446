"""AMP with GradScaler and a fused optimizer: overflowing steps are skipped while the scheduler keeps stepping (normal)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
scaler = torch.amp.GradScaler("cpu")

step = 0
for epoch in range(3):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if step in (0, 5):
            loss = loss * float("inf")  # an overflow, as with fp16 early in training
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # expect: step-skipped step=1
        scaler.update()
        scheduler.step()
        step += 1
