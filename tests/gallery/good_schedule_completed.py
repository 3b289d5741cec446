"""Cosine sized from the loader and the epochs the loop really runs (60 steps): the LR reaches eta_min."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CONFIG = {
    "lr": 0.05,
    "batch_size": 8,
    "epochs": 5,
    "log_every": 20,
}


class Trainer:
    def __init__(self, model, train_set, config):
        self.model, self.config = model, config
        self.loader = DataLoader(train_set, batch_size=config["batch_size"], shuffle=True)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
        total_steps = len(self.loader) * config["epochs"]
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        self.global_step = 0
        self.log = []

    def fit(self):
        for epoch in range(self.config["epochs"]):
            for x, y in self.loader:
                self.optimizer.zero_grad()
                loss = nn.functional.mse_loss(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.global_step += 1
                if self.global_step % self.config["log_every"] == 0:
                    self.log.append((self.global_step, loss.item(), self.scheduler.get_last_lr()[0]))
        return self.log


torch.manual_seed(0)
train_set = TensorDataset(torch.randn(96, 10), torch.randn(96, 1))
Trainer(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1)), train_set, CONFIG).fit()
