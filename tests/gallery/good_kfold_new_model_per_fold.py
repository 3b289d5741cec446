"""K-fold cross-validation: each fold trains a fresh model with its own optimizer and OneCycleLR."""
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

cfg = {"max_lr": 1e-2, "epochs": 2, "folds": 3, "batch_size": 8}


def make_model():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))


def configure_optimizers(model, steps_per_epoch, cfg):
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["max_lr"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["max_lr"], epochs=cfg["epochs"],
                                                    steps_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def run_fold(train_set, val_set, cfg):
    loader = DataLoader(train_set, batch_size=cfg["batch_size"], shuffle=True)
    model = make_model()
    optimizer, scheduler = configure_optimizers(model, len(loader), cfg)
    for epoch in range(cfg["epochs"]):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    x, y = val_set[:]
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


torch.manual_seed(0)
data = TensorDataset(torch.randn(48, 10), torch.randn(48, 1))
folds = torch.randperm(len(data)).chunk(cfg["folds"])
scores = []
for k in range(cfg["folds"]):
    train_idx = torch.cat([f for i, f in enumerate(folds) if i != k]).tolist()
    scores.append(run_fold(Subset(data, train_idx), TensorDataset(*data[folds[k]]), cfg))
