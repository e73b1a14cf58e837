"""self.log(name, metric) inside the Trainer: forward's value on_step, compute() on_epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

trainer_mod = pytest.importorskip("trainer.trainer")
module_mod = pytest.importorskip("trainer.module")

from trainer.metrics import Accuracy, F1Score  # noqa: E402

G = torch.Generator().manual_seed(0)
X = torch.randn(96, 4, generator=G)
Y = torch.randint(0, 3, (96,), generator=G)


class Clf(module_mod.TrainModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.train_acc = Accuracy("multiclass", num_classes=3)
        self.val_f1 = F1Score("multiclass", num_classes=3, average="macro")
        self.val_preds: list[torch.Tensor] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_f1(logits, y)
        self.val_preds.append(logits.argmax(1))
        self.log("val_f1", self.val_f1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # weights stay: predictions known


def test_logged_metric_epoch_value_equals_sklearn(tmp_path):
    model = Clf()
    dl = DataLoader(TensorDataset(X, Y), batch_size=32)
    trainer = trainer_mod.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                                  enable_progress_bar=False, num_sanity_val_steps=0,
                                  default_root_dir=tmp_path, accelerator="cpu", devices=1)
    trainer.fit(model, dl, dl)
    with torch.no_grad():
        preds = model(X).argmax(1)
    cm = trainer.callback_metrics
    np.testing.assert_allclose(float(cm["val_f1"]), skm.f1_score(Y, preds, average="macro"),
                               rtol=1e-6)
    np.testing.assert_allclose(float(cm["train_acc_epoch"]), skm.accuracy_score(Y, preds),
                               rtol=1e-6)
    # the metrics were reset after the epoch
    assert model.val_f1.update_count == 0 and model.train_acc.update_count == 0
