"""The optimizer is re-created after the scheduler was built (e.g. after moving the model)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(128, 10), torch.randn(128, 1)), batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = make_optimizer(model)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
model = model.to(torch.float32)
optimizer = make_optimizer(model)

for epoch in range(3):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    scheduler.step()  # expect: scheduler-orphaned step=0
