"""Callbacks under DDP (2 gloo workers): one writer, one decision for every rank."""

import os

import pytest
import torch

pytest.importorskip("trainer.launcher")

from e2e_helpers import Scripted, loaders  # noqa: E402

from trainer import Trainer  # noqa: E402
from trainer.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from trainer.loggers import CSVLogger  # noqa: E402

pytestmark = pytest.mark.ddp


class RankScripted(Scripted):
    """val_loss logged without sync: falling on rank 0, rising on rank 1."""

    def validation_step(self, batch, batch_idx):
        e = self.current_epoch
        value = 1.0 - 0.1 * e if self.trainer.global_rank == 0 else 1.0 + 0.1 * e
        self.log("val_loss", torch.tensor(value))


def test_rank_zero_writes_and_every_rank_stops_together(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", monitor="val_loss",
                         save_top_k=2, save_last=True)
    es = EarlyStopping("val_loss", patience=2)  # rank 1 wants to stop after epoch 2
    lg = CSVLogger(tmp_path / "logs")
    train, val = loaders()
    t = Trainer(max_epochs=6, strategy="ddp", devices=2, accelerator="cpu", logger=lg,
                callbacks=[mc, es], enable_progress_bar=False, num_sanity_val_steps=0)
    t.fit(RankScripted(), train, val)
    assert t.current_epoch == 3  # epochs 0, 1, 2 ran on both ranks, then both stopped
    # rank 0's values decided: its falling val_loss keeps epochs 1 and 2
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"]
    assert t.checkpoint_callback.best_model_path == str(tmp_path / "ck" / "epoch=2.ckpt")
    # one CSV run directory, written by rank zero
    assert os.listdir(tmp_path / "logs" / "trainflow_logs") == ["version_0"]
