"""A tiny regression module whose validation metric follows a script, for end-to-end tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import TrainModule


def loaders(n: int = 32, batch_size: int = 4, val: bool = True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True)
    ds = TensorDataset(x, y)
    train = DataLoader(ds, batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    return (train, DataLoader(ds, batch_size=8)) if val else (train, None)


class Scripted(TrainModule):
    """Linear regression; ``val_loss`` at epoch e is ``script[e]`` (when a script is given)."""

    def __init__(self, script=None, lr: float = 0.05, scheduler: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        script = self.hparams.script
        if script is None:
            value = nn.functional.mse_loss(self.layer(x), y)
        else:
            value = torch.tensor(float(script[min(self.current_epoch, len(script) - 1)]))
        self.log("val_loss", value, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        if self.hparams.scheduler == "epoch":
            return {"optimizer": opt,
                    "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}
        if self.hparams.scheduler == "step":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt
