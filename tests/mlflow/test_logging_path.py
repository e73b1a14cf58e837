"""The Trainer's per-step logging path: tensors to loggers that accept them (no per-step
.item()), floats to the others, floats from ``trainer.logged_metrics``."""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.loggers.base import Logger
from trainer.module import TrainModule
from trainer.trainer import Trainer


class Recorder(Logger):
    """A real Logger that keeps what it is given."""

    def __init__(self, accepts_tensors: bool) -> None:
        self.accepts_tensors = accepts_tensors
        self.calls: list[tuple[int, dict[str, Any]]] = []

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.calls.append((step, dict(metrics)))


class Tiny(TrainModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_tensors_to_accepting_loggers_floats_to_the_others(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(12, 4, generator=g), torch.randint(0, 2, (12,), generator=g))
    with_tensors, with_floats = Recorder(True), Recorder(False)
    trainer = Trainer(
        max_epochs=2,
        logger=[with_tensors, with_floats],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), DataLoader(ds, batch_size=4))  # 3 steps per epoch
    assert [s for s, _ in with_tensors.calls] == [1, 3, 5]  # every 2nd of 6 steps
    assert [s for s, _ in with_floats.calls] == [1, 3, 5]
    for (_, t), (_, f) in zip(with_tensors.calls, with_floats.calls):
        assert isinstance(t["loss"], torch.Tensor) and t["loss"].ndim == 0
        assert type(f["loss"]) is float and f["loss"] == t["loss"].item()
        assert t["epoch"] == f["epoch"] and type(f["epoch"]) is float
    assert [c["epoch"] for _, c in with_floats.calls] == [0.0, 1.0, 1.0]
    logged = trainer.logged_metrics
    assert logged == {"loss": with_floats.calls[-1][1]["loss"], "epoch": 1.0}
    assert all(type(v) is float for v in logged.values())
    assert pickle.loads(pickle.dumps(trainer)).logged_metrics == logged
