"""Fine-tuning that unfreezes the backbone as a new param group after the warmup scheduler was built."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randn(64, 1)), batch_size=8, shuffle=True)
backbone = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
head = nn.Linear(16, 1)
backbone.requires_grad_(False)
optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=4)

for epoch in range(4):
    if epoch == 2:
        backbone.requires_grad_(True)
        optimizer.add_param_group({"params": backbone.parameters(), "lr": 0.01})  # expect: param-group-added-after-scheduler step=16
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(head(backbone(x)), y)
        loss.backward()
        optimizer.step()
    scheduler.step()
