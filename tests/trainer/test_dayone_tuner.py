"""Tuner.lr_find and Tuner.scale_batch_size on small seeded problems."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.trainer.core_helpers import flat
from trainer import Trainer, TrainModule, Tuner


def _regression(n: int = 512) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Reg(TrainModule):
    """Linear regression with SGD at ``hparams.lr``; loaders built from ``batch_size``."""

    def __init__(self, lr: float = 1e-3, batch_size: int = 512, n: int = 512,
                 oom_above: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)
        self.tried: list[int] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == 0 and batch_idx == 0:  # a trial's first batch
            self.tried.append(len(x))
        if self.hparams.oom_above is not None and len(x) > self.hparams.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return nn.functional.mse_loss(self(x), y)

    def train_dataloader(self):
        return DataLoader(_regression(self.hparams.n), batch_size=self.batch_size)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _trainer() -> Trainer:
    return Trainer(max_epochs=3, logger=False, enable_progress_bar=False)


# ------------------------------------------------------------------ lr_find
def test_lr_find_suggests_a_plausible_rate_and_restores_weights():
    m = Reg()
    before = flat(m).clone()
    trainer = Trainer(logger=False, enable_progress_bar=False)  # 1000 epochs of one batch
    finder = Tuner(trainer).lr_find(m, min_lr=1e-5, max_lr=10.0)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert 50 < len(lrs) <= 100 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    # the sweep reached rates that learn (the first points are biased low by the smoothing's
    # correction, as in Lightning: the first is loss / (1 + beta))
    assert min(losses) < 0.5 * max(losses[:10])
    assert losses[-1] > 4 * min(losses)  # and stopped once the loss diverged (threshold 4)
    lr = finder.suggestion()
    # full-batch linear regression: SGD diverges above ~2/lambda_max (~0.7 here); a useful
    # rate lies one to three decades below that (Lightning's rule, the steepest d loss / d lr,
    # picks 5e-3 on this sweep: test_tuner_vs_lightning checks it is Lightning's pick)
    assert 1e-3 < lr < 1.0
    assert m.hparams.lr == lr  # update_attr
    assert torch.equal(flat(m), before)  # weights put back
    assert trainer.global_step == 0 and m._trainer is None  # the given Trainer is untouched
    fig = finder.plot(suggest=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2  # the curve and the red point


def test_lr_find_linear_mode_and_update_attr_off():
    m = Reg(lr=0.123)
    finder = Tuner(Trainer(max_epochs=20, logger=False, enable_progress_bar=False)).lr_find(
        m, min_lr=1e-3, max_lr=0.5, num_training=20, mode="linear", update_attr=False)
    lrs = finder.results["lr"]
    # evenly spaced from the second point on (Lightning's schedule: min_lr, then r = 2/n ...)
    assert lrs[0] == 1e-3 and lrs[2] - lrs[1] == pytest.approx(lrs[3] - lrs[2])
    assert lrs[1] - lrs[0] == pytest.approx(2 * (lrs[2] - lrs[1]))
    assert m.hparams.lr == 0.123


def test_lr_find_refusals():
    class NoLR(Reg):
        def __init__(self):
            super().__init__()
            del self.hparams["lr"]

    with pytest.raises(ValueError, match="no lr or learning_rate"):
        Tuner(_trainer()).lr_find(NoLR())
    with pytest.raises(ValueError, match="mode"):
        Tuner(_trainer()).lr_find(Reg(), mode="cosine")


# ------------------------------------------------------------------ scale_batch_size
@pytest.mark.parametrize("mode, expected, tried", [
    ("power", 16, [2, 4, 8, 16, 32]),
    ("binsearch", 22, [2, 4, 8, 16, 32, 24, 28, 26, 25]),  # 24 less Lightning's 5 % margin
])
def test_scale_batch_size_stops_at_out_of_memory(mode, expected, tried):
    m = Reg(batch_size=1, oom_above=24)
    before = flat(m).clone()
    found = Tuner(_trainer()).scale_batch_size(m, mode=mode)
    assert found == expected == m.batch_size == m.hparams.batch_size
    assert m.tried == tried
    assert torch.equal(flat(m), before)


def test_scale_batch_size_stops_once_a_batch_covers_the_dataset():
    m = Reg(batch_size=1, n=40)
    # as in Lightning: 32 doubles to 64 (a loader of one batch of 40), and a size at or above
    # the dataset's length is where the search stops, so 64 is returned
    assert Tuner(_trainer()).scale_batch_size(m, mode="power") == 64 == m.batch_size
    assert m.tried == [2, 4, 8, 16, 32, 40]


def test_scale_batch_size_refusals():
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        Tuner(_trainer()).scale_batch_size(Reg(), train_dataloaders=Reg().train_dataloader())

    class NoBatchSize(Reg):
        def __init__(self):
            super().__init__()
            del self.batch_size, self.hparams["batch_size"]

    with pytest.raises(ValueError, match="no 'batch_size' attribute"):
        Tuner(_trainer()).scale_batch_size(NoBatchSize())
