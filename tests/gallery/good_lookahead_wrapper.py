"""A Lookahead optimizer wrapper (timm style) with a per-batch warmup scheduler built on the wrapper."""
from collections import OrderedDict, defaultdict

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Lookahead(torch.optim.Optimizer):
    """Every k steps of the inner optimizer, pull the slow weights towards the fast ones."""

    def __init__(self, base_optimizer, alpha=0.5, k=4):
        # Optimizer.__init__ is not called on purpose: the wrapper shares the inner optimizer's groups.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
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
    def update_slow(self, group):
        for fast in group["params"]:
            if fast.grad is None:
                continue
            param_state = self._base_optimizer.state[fast]
            if "lookahead_slow_buff" not in param_state:
                param_state["lookahead_slow_buff"] = fast.detach().clone()
            slow = param_state["lookahead_slow_buff"]
            slow.add_(fast - slow, alpha=group["lookahead_alpha"])
            fast.copy_(slow)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._base_optimizer.step(closure)
        for group in self._base_optimizer.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self.update_slow(group)
        return loss

    def state_dict(self):
        return self._base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self._base_optimizer.load_state_dict(state_dict)
        self.param_groups = self._base_optimizer.param_groups


def create_optimizer(model, cfg):
    base = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return Lookahead(base, alpha=cfg["lookahead_alpha"], k=cfg["lookahead_k"]) if cfg["lookahead"] else base


cfg = {"lr": 1e-3, "weight_decay": 0.01, "lookahead": True, "lookahead_alpha": 0.5, "lookahead_k": 4,
       "warmup_steps": 10, "epochs": 3}
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = create_optimizer(model, cfg)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg["warmup_steps"]))

for epoch in range(cfg["epochs"]):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
