"""A hand-written warmup + inverse-sqrt scheduler class (no torch base class), stepped per batch."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class InverseSqrtSchedule:
    def __init__(self, optimizer, warmup):
        self.optimizer, self.warmup, self.count = optimizer, warmup, 0
        self.base = [g["lr"] for g in optimizer.param_groups]
        self._apply()

    def _apply(self):
        factor = min((self.count + 1) / self.warmup, (self.warmup / (self.count + 1)) ** 0.5)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor

    def step(self):
        self.count += 1
        self._apply()


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = InverseSqrtSchedule(optimizer, warmup=6)

for epoch in range(3):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()  # expect: lr-changed-outside-scheduler step=2
        scheduler.step()
