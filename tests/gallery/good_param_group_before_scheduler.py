"""Layer-wise LRs: a second param group is added before the scheduler is built."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
backbone = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
head = nn.Linear(16, 1)
optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
optimizer.add_param_group({"params": backbone.parameters(), "lr": 0.01, "name": "backbone"})
scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 3], gamma=0.1)

for epoch in range(4):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(head(backbone(x)), y)
        loss.backward()
        optimizer.step()
    scheduler.step()
