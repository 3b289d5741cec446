"""An iteration-based StepLR on purpose: halve every 100 iterations, stepped per batch (200 in all)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CONFIG = {
    "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
    "scheduler": {"name": "StepLR", "step_size": 100, "gamma": 0.5},  # in iterations, like max_iters below
    "epochs": 8,
    "batch_size": 4,
    "max_iters": 200,
}


class Trainer:
    def __init__(self, model, loader, config):
        self.model, self.loader, self.config = model, loader, config
        opt_cfg = dict(config["optimizer"])
        self.optimizer = getattr(torch.optim, opt_cfg.pop("name"))(model.parameters(), **opt_cfg)
        sched_cfg = dict(config["scheduler"])
        self.scheduler = getattr(torch.optim.lr_scheduler, sched_cfg.pop("name"))(self.optimizer, **sched_cfg)
        self.iteration = 0

    def _step(self, x, y):
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        return loss.item()

    def fit(self):
        for epoch in range(self.config["epochs"]):
            for x, y in self.loader:
                self._step(x, y)
                if self.iteration >= self.config["max_iters"]:
                    return


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(100, 10), torch.randn(100, 1)), batch_size=CONFIG["batch_size"],
                    shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
Trainer(model, loader, CONFIG).fit()
