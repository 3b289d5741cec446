"""Two phases on one optimizer: a LinearLR warmup, then a cosine scheduler built once the warmup is done."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Trainer:
    def __init__(self, model, loader, lr=0.05, warmup_steps=8, epochs=4):
        self.model, self.loader, self.epochs = model, loader, epochs
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        self.warmup_steps = warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=0.1, total_iters=warmup_steps)
        self.step_count = 0

    def _on_warmup_end(self):
        remaining = self.epochs * len(self.loader) - self.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=remaining, eta_min=1e-4)

    def fit(self):
        for epoch in range(self.epochs):
            for x, y in self.loader:
                self.optimizer.zero_grad()
                nn.functional.mse_loss(self.model(x), y).backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step_count += 1
                if self.step_count == self.warmup_steps:
                    self._on_warmup_end()


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
Trainer(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1)), loader).fit()
