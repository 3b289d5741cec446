"""Resume to train longer, extending the restored PolynomialLR's total_iters after load_state_dict."""
import io

import torch
from torch import nn


def make_data(n=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 10, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def extend_schedule(scheduler, total_iters):
    """Stretch a restored poly schedule to `total_iters`, continuing from where it stands."""
    scheduler.total_iters = total_iters
    done = min(scheduler.last_epoch, total_iters) / total_iters
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * (1.0 - done) ** scheduler.power  # the ended schedule left lr=0 here


def train(total_iters, steps, ckpt=None):
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_iters, power=1.0)
    if ckpt is not None:
        ckpt.seek(0)
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        extend_schedule(scheduler, total_iters)  # the checkpoint's total_iters would otherwise win
    x, y = make_data()
    for it in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
    out = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, out)
    return out


torch.manual_seed(0)
first = train(total_iters=10, steps=10)
train(total_iters=30, steps=20, ckpt=first)
