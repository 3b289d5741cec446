"""Lookahead around SGD (timm style wrapper) with a StepLR on the wrapper, stepped once per epoch."""
from collections import defaultdict

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Lookahead(torch.optim.Optimizer):
    def __init__(self, base_optimizer, alpha=0.5, k=6):
        # NOTE: Optimizer.__init__ is deliberately not called; the groups are the inner optimizer's.
        self._base_optimizer = base_optimizer
        defaults = {"lookahead_alpha": alpha, "lookahead_k": k, "lookahead_step": 0}
        self.param_groups = base_optimizer.param_groups
        self.defaults = base_optimizer.defaults
        self.defaults.update(defaults)
        self.state = defaultdict(dict)
        for name, default in defaults.items():
            for group in self._base_optimizer.param_groups:
                group.setdefault(name, default)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._base_optimizer.step(closure)
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                for fast in group["params"]:
                    state = self._base_optimizer.state[fast]
                    slow = state.setdefault("lookahead_slow_buff", fast.detach().clone())
                    slow.add_(fast - slow, alpha=group["lookahead_alpha"])
                    fast.copy_(slow)
        return loss


class Trainer:
    def __init__(self, model, loader, epochs=4):
        self.model, self.loader, self.epochs = model, loader, epochs
        inner = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        self.optimizer = Lookahead(inner, alpha=0.5, k=6)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.1)

    def train_epoch(self):
        for x, y in self.loader:
            self.optimizer.zero_grad()
            loss = nn.functional.mse_loss(self.model(x), y)
            loss.backward()
            self.optimizer.step()

    def fit(self):
        for epoch in range(self.epochs):
            self.train_epoch()
            self.scheduler.step()


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
Trainer(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1)), loader).fit()
