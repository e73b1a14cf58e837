"""Tuner.lr_find and trainer.estimated_stepping_batches outside fit, against Lightning 2.6.

lr_find runs in the Trainer's own fit loop in Lightning: its max_epochs and validation schedule
hold, and validation runs (up to num_training batches). estimated_stepping_batches read outside
fit loads the attached module's training data, as Lightning does.

Needs the optional extra ``compare`` (pytorch-lightning); skipped without it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from core_helpers import make_data, make_loader, make_net
from torch import nn

import trainer as ours

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.tuner import Tuner as PLTuner  # noqa: E402


def _module(lightning: bool, counts: dict[str, int]):
    class Module(pl.LightningModule if lightning else ours.TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)

        def training_step(self, batch, batch_idx):
            counts["train"] += 1
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            counts["val"] += 1
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def train_dataloader(self):
            return make_loader(make_data(n=40), batch_size=8)  # 5 batches

        def val_dataloader(self):
            return make_loader(make_data(n=16), batch_size=8, shuffle=False)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


def _trainer(lightning: bool, tmp_path, **flags):
    kw = dict(default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
              enable_checkpointing=False, accelerator="cpu", devices=1, **flags)
    return pl.Trainer(enable_model_summary=False, **kw) if lightning else ours.Trainer(**kw)


@pytest.mark.parametrize("flags", [dict(max_epochs=5), dict(max_epochs=2),
                                   dict(max_epochs=5, val_check_interval=2)])
def test_lr_find_runs_what_lightning_runs(flags, tmp_path):
    seen = {}
    for lightning in (True, False):
        counts = {"train": 0, "val": 0}
        t = _trainer(lightning, tmp_path / str(lightning), **flags)
        tuner = PLTuner(t) if lightning else ours.Tuner(t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finder = tuner.lr_find(_module(lightning, counts), num_training=12,
                                   early_stop_threshold=None, update_attr=False)
        seen[lightning] = (counts, len(finder.results["lr"]))
    assert seen[False] == seen[True]
    assert seen[True][0]["val"] > 0


def test_estimated_stepping_batches_outside_fit(tmp_path):
    seen = {}
    for lightning in (True, False):
        counts = {"train": 0, "val": 0}
        t = _trainer(lightning, tmp_path / str(lightning), max_epochs=3,
                     accumulate_grad_batches=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.validate(_module(lightning, counts), verbose=False)
        seen[lightning] = t.estimated_stepping_batches  # the module's train_dataloader()
    assert seen[False] == seen[True] == 3 * 3


def test_estimated_stepping_batches_with_nothing_attached_is_refused_in_one_line():
    t = ours.Trainer(max_epochs=2, logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="estimated_stepping_batches: no module"):
        _ = t.estimated_stepping_batches
