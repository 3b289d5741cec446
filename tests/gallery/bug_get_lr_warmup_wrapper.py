"""A GradualWarmupScheduler-style wrapper whose get_lr() hands over via after_scheduler.get_lr()."""
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader, TensorDataset


class GradualWarmupScheduler(LRScheduler):
    """Linear warmup over `total_epoch` epochs, then hand over to `after_scheduler`."""

    def __init__(self, optimizer, multiplier, total_epoch, after_scheduler=None):
        self.multiplier = multiplier
        self.total_epoch = total_epoch
        self.after_scheduler = after_scheduler
        self.finished = False
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch > self.total_epoch:
            if self.after_scheduler:
                if not self.finished:
                    self.after_scheduler.base_lrs = [base_lr * self.multiplier for base_lr in self.base_lrs]
                    self.finished = True
                return self.after_scheduler.get_lr()  # expect: get-lr-called
            return [base_lr * self.multiplier for base_lr in self.base_lrs]
        if self.multiplier == 1.0:
            return [base_lr * self.last_epoch / self.total_epoch for base_lr in self.base_lrs]
        return [base_lr * ((self.multiplier - 1.0) * self.last_epoch / self.total_epoch + 1.0)
                for base_lr in self.base_lrs]

    def step(self, epoch=None):
        if self.finished and self.after_scheduler:
            self.after_scheduler.step()
            self._last_lr = self.after_scheduler.get_last_lr()
        else:
            super().step(epoch)


def fit(model, loader, epochs=8, warmup_epochs=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cosine = CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs)
    scheduler = GradualWarmupScheduler(optimizer, multiplier=1.0, total_epoch=warmup_epochs, after_scheduler=cosine)
    lrs = []
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(32, 10), torch.randn(32, 1)), batch_size=8, shuffle=True)
fit(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1)), loader)
