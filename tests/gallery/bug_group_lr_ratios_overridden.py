"""Fine-tuning with a 10x lower LR for the encoder, then OneCycleLR(max_lr=scalar) gives both groups the same LR."""
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


def param_groups(model, lr):
    # Discriminative fine-tuning: the pretrained encoder moves 10x slower than the new head.
    return [{"params": model.encoder.parameters(), "lr": lr / 10, "name": "encoder"},
            {"params": model.head.parameters(), "lr": lr, "name": "head"}]


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 10), torch.randint(0, 3, (64,))), batch_size=8, shuffle=True)
model = Classifier()
epochs, lr = 3, 1e-3
total_steps = epochs * len(loader)
optimizer = torch.optim.AdamW(param_groups(model, lr), weight_decay=0.01)
scheduler = OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)  # expect: group-lr-ratios-overridden

for epoch in range(epochs):
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
