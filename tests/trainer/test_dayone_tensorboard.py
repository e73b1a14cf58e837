"""TensorBoardLogger: event files read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import os
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import Trainer
from trainer.loggers import TensorBoardLogger


def _events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir)
    acc.Reload()
    return acc


def test_fit_writes_scalars_and_hparams(tmp_path):
    class Logs(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    lg = TensorBoardLogger(tmp_path)
    trainer = Trainer(max_epochs=2, logger=lg, log_every_n_steps=1, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)
    data = make_data(32)
    trainer.fit(Logs(lr=0.05), make_loader(data), make_loader(data, shuffle=False))
    assert lg.log_dir == os.path.join(tmp_path, "lightning_logs", "version_0")
    acc = _events(lg.log_dir)
    tags = acc.Tags()["scalars"]
    assert {"train_loss", "val_loss", "epoch", "hp_metric"} <= set(tags)
    train = acc.Scalars("train_loss")
    assert [e.step for e in train] == list(range(8))  # 2 epochs x 4 batches, one per step
    val = acc.Scalars("val_loss")
    assert len(val) == 2 and val[-1].value == pytest.approx(trainer.logged_metrics["val_loss"])
    assert acc.Scalars("hp_metric")[0].value == -1
    # hyperparameters: hparams.yaml as in Lightning, and the HPARAMS plugin's session start
    assert "lr: 0.05" in (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    assert b"lr" in plugin["_hparams_/session_start_info"]


def test_versions_count_up_and_explicit_version(tmp_path):
    for _ in range(2):
        lg = TensorBoardLogger(tmp_path, name="exp")
        lg.log_metrics({"a": 1.0}, step=0)
        lg.finalize("success")
    assert sorted(os.listdir(tmp_path / "exp")) == ["version_0", "version_1"]
    lg = TensorBoardLogger(tmp_path, name="exp", version="mine")
    lg.log_metrics({"a": 2.0}, step=3)
    lg.finalize("success")
    assert [(e.step, e.value) for e in _events(lg.log_dir).Scalars("a")] == [(3, 2.0)]


def test_without_tensorboard_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'trainflow\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


def test_experiment_on_other_ranks_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    lg = TensorBoardLogger(tmp_path)
    lg.experiment.add_scalar("x", 1.0, 0)  # no error, no file
    lg.log_metrics({"x": 1.0}, step=0)
    lg.finalize("success")
    assert not (tmp_path / "lightning_logs").exists()
