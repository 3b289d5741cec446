"""Reading the learning rate of a plain SGD optimizer, with no scheduler.

``lrdebug.effective_lr(optimizer)`` gives, per param group, the LR the next ``optimizer.step()``
will use, as floats (also when an LR is a tensor). Under ``lrdebug run`` the trace records the LR
each step actually used.

    python examples/read_lr_sgd.py
    lrdebug run examples/read_lr_sgd.py
Expected: every step uses 0.05 for the weights and 0.5 for the biases.
"""

import torch

import lrdebug

torch.manual_seed(0)
model = torch.nn.Linear(10, 1)
optimizer = torch.optim.SGD(
    [
        {"params": [model.weight], "name": "weights"},
        {"params": [model.bias], "lr": 0.5, "name": "biases"},
    ],
    lr=0.05,
    momentum=0.9,
)
x, y = torch.randn(64, 10), torch.randn(64, 1)

for step in range(5):
    lrs = lrdebug.effective_lr(optimizer)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    print(f"step {step + 1}: lr {lrs}, loss {loss.item():.4f}")
