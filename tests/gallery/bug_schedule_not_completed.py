"""Cosine sized by config max_steps=1000, but the loop runs by epochs: 60 steps, and the LR barely decays."""
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader, TensorDataset

CONFIG = {
    "lr": 0.05,
    "batch_size": 8,
    "epochs": 5,
    "max_steps": 1000,  # left over from the pretraining config
    "log_every": 20,
}


class Trainer:
    def __init__(self, model, train_set, config):
        self.model, self.config = model, config
        self.loader = DataLoader(train_set, batch_size=config["batch_size"], shuffle=True)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
        self.scheduler = CosineAnnealingLR(self.optimizer, T_max=config["max_steps"])  # expect: schedule-not-completed
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
