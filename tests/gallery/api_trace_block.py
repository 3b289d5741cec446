"""A script that uses lrdebug.trace() itself (trace directory in argv[1]); its scheduler steps first."""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrdebug

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(32, 10), torch.randn(32, 1)), batch_size=8)
model = nn.Linear(10, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

with lrdebug.trace(optimizer, scheduler, out=sys.argv[1]):
    for epoch in range(2):
        scheduler.step()  # expect: scheduler-before-optimizer step=0
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
print("training finished")
