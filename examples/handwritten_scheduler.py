"""SGD(lr=1.0) driven by a hand-written scheduler class that sets lr = 1 / (1 + 0.1 t).

The scheduler is not an ``LRScheduler``: it is any object with ``step()`` and an ``optimizer``.
lrdebug records it when it is passed explicitly, and sees its effect on the LR in auto mode.

    lrdebug run examples/handwritten_scheduler.py                  # auto mode, no edit
    python examples/handwritten_scheduler.py --trace runs/hand     # lrdebug.trace(optimizer, scheduler)
Expected LRs of the 10 steps: 1.0, 1/1.1, 1/1.2, ..., 1/1.9.
"""

import argparse
import contextlib

import torch

import lrdebug


class InverseTimeLR:
    """Sets every group's LR to ``base_lr / (1 + decay * t)`` after the t-th step."""

    def __init__(self, optimizer, decay=0.1):
        self.optimizer = optimizer
        self.decay = decay
        self.t = 0
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def step(self):
        self.t += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base / (1 + self.decay * self.t)


def main(trace_dir=None, steps=10):
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = InverseTimeLR(optimizer)
    x, y = 0.3 * torch.randn(64, 10), torch.randn(64, 1)  # small inputs: lr=1.0 stays stable

    recording = lrdebug.trace(optimizer, scheduler, out=trace_dir) if trace_dir else contextlib.nullcontext()
    with recording:
        for step in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            print(f"step {step + 1}: loss {loss.item():.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", metavar="DIR", help="record with lrdebug.trace(optimizer, scheduler, out=DIR)")
    main(parser.parse_args().trace)
