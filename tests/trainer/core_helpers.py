"""Tiny modules and data for the trainer tests (importable by subprocess scripts too)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import TrainModule


def make_data(n: int = 64, d_in: int = 8, n_cls: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, n_cls, (n,), generator=g)
    return TensorDataset(x, y)


def make_loader(ds: TensorDataset, batch_size: int = 8, seed: int = 1, shuffle: bool = True,
                **kw) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, **kw)


def make_net(d_in: int = 8, hidden: int = 16, n_cls: int = 3, dropout: float = 0.1,
             seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_cls))


class TinyModule(TrainModule):
    """A classifier with dropout (so the global RNG matters) and SGD with momentum."""

    def __init__(self, d_in: int = 8, hidden: int = 16, n_cls: int = 3, lr: float = 0.1,
                 dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = make_net(d_in, hidden, n_cls, dropout, seed)
        self.example_input_array = torch.zeros(2, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        acc = (self(x).argmax(-1) == y).float().mean()
        self.log("test_acc", acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])
