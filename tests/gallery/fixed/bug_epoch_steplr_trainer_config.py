"""Fixed: the Trainer steps its epoch-sized scheduler once per epoch."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CONFIG = {
    "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "scheduler": {"name": "StepLR", "step_size": 2, "gamma": 0.5},  # halve every 2 epochs
    "epochs": 4,
    "batch_size": 8,
}


class Trainer:
    def __init__(self, model, loader, config):
        self.model, self.loader, self.config = model, loader, config
        opt_cfg = dict(config["optimizer"])
        self.optimizer = getattr(torch.optim, opt_cfg.pop("name"))(model.parameters(), **opt_cfg)
        sched_cfg = dict(config["scheduler"])
        self.scheduler = getattr(torch.optim.lr_scheduler, sched_cfg.pop("name"))(self.optimizer, **sched_cfg)
        self.global_step = 0

    def _step(self, x, y):
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        return loss.item()

    def fit(self):
        history = []
        for epoch in range(self.config["epochs"]):
            self.model.train()
            losses = [self._step(x, y) for x, y in self.loader]
            self.scheduler.step()
            history.append(sum(losses) / len(losses))
        return history


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(32, 10), torch.randn(32, 1)), batch_size=CONFIG["batch_size"],
                    shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
Trainer(model, loader, CONFIG).fit()
