"""Resume to train longer: the new PolynomialLR(total_iters=30) is overwritten by the checkpoint's total_iters=10."""
import io

import torch
from torch import nn


def make_data(n=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 10, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def train(total_iters, steps, ckpt=None):
    """Train for `steps` steps of a poly-decay schedule sized `total_iters`; resume from `ckpt` if given."""
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_iters, power=1.0)
    if ckpt is not None:
        ckpt.seek(0)
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    x, y = make_data()
    for it in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()  # expect: scheduler-past-horizon
    out = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, out)
    return out


torch.manual_seed(0)
first = train(total_iters=10, steps=10)
# The loss still goes down: continue training for longer, with a 30-step schedule for the new run.
train(total_iters=30, steps=20, ckpt=first)
