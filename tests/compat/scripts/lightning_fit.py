"""Two Lightning fits, as a user would write them; lrdebug is not mentioned.

1. AdamW with two named param groups, OneCycleLR stepped per optimizer step, gradient accumulation 2.
2. SGD with StepLR stepped per epoch.

``python lightning_fit.py OUT.json [ddp]``: writes what LearningRateMonitor(logging_interval="step")
logged, per fit, to OUT.json (OUT.rank<r>.json under ``ddp``: two CPU processes).
"""

import cpu_torchvision  # noqa: F401,I001 - before the framework imports torchvision
import json
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    """Keeps what is logged: (step, {name: value})."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append([step, {k: float(v) for k, v in metrics.items()}])


class Net(pl.LightningModule):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.body = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(torch.relu(self.body(x))), y)

    def configure_optimizers(self):
        if self.schedule == "onecycle":
            opt = torch.optim.AdamW([
                {"params": self.body.parameters(), "lr": 1e-2, "name": "body"},
                {"params": self.head.parameters(), "lr": 1e-3, "name": "head"},
            ])
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=[1e-2, 1e-3], total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def fit(schedule, accumulate, ddp):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    logger = MemoryLogger()
    trainer = pl.Trainer(
        max_epochs=3, accumulate_grad_batches=accumulate, logger=logger, log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="step")], accelerator="cpu",
        devices=2 if ddp else 1, strategy="ddp" if ddp else "auto", enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Net(schedule), loader)
    return trainer.global_rank, {"steps": trainer.global_step, "logged": logger.rows}


if __name__ == "__main__":
    out, ddp = sys.argv[1], sys.argv[2:] == ["ddp"]
    rank, onecycle = fit("onecycle", 2, ddp)
    fits = {"onecycle": onecycle}
    if not ddp:
        fits["steplr"] = fit("steplr", 1, ddp)[1]
    path = out.replace(".json", f".rank{rank}.json") if ddp else out
    with open(path, "w") as f:
        json.dump(fits, f)
