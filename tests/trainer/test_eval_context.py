"""Validation inside a training epoch hands the live metrics back to training, as Lightning does:
after a mid-epoch validation, training hooks still see the training step values."""

from __future__ import annotations

import pytest
from core_helpers import make_data, make_loader, make_net
from torch import nn
from torch.optim import SGD

import trainer as ours

pl = pytest.importorskip("pytorch_lightning")


def _run(framework: str, tmp_path) -> list[tuple[bool, bool, bool]]:
    lightning = framework == "lightning"
    seen: list[tuple[bool, bool, bool]] = []

    class Module(pl.LightningModule if lightning else ours.TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def on_train_batch_end(self, outputs, batch, batch_idx):
            m = self.trainer.callback_metrics
            seen.append(("train_loss" in m, "val_loss" in m, self.trainer.training))

        def configure_optimizers(self):
            return SGD(self.parameters(), lr=0.1)

    kw = dict(default_root_dir=tmp_path / framework, max_epochs=1, val_check_interval=2,
              num_sanity_val_steps=0, enable_progress_bar=False, logger=False,
              enable_checkpointing=False, accelerator="cpu", devices=1)
    t = pl.Trainer(enable_model_summary=False, **kw) if lightning else ours.Trainer(**kw)
    t.fit(Module(), make_loader(make_data(n=48), batch_size=8),
          make_loader(make_data(n=16), batch_size=8, shuffle=False))
    return seen


def test_training_hooks_after_a_mid_epoch_validation_see_what_lightning_shows(tmp_path):
    expected = _run("lightning", tmp_path)
    assert _run("ours", tmp_path) == expected
    assert all(train for train, _, _ in expected) and expected[-1][1]
