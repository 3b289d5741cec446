"""Adam(lr=0.1) with StepLR(step_size=3, gamma=0.1) over 10 steps: which LR did each step use?

Run it under lrdebug with no edit:  lrdebug run examples/train_steplr.py
Expected: 0.1 x3, 0.01 x3, 0.001 x3, 0.0001.
"""

import torch

torch.manual_seed(0)
model = torch.nn.Linear(10, 1)
optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
x, y = torch.randn(64, 10), torch.randn(64, 1)

for step in range(10):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    scheduler.step()
    print(f"step {step + 1}: loss {loss.item():.4f}")
