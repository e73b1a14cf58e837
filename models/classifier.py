"""What the shipped classifiers share: cross-entropy on logits, and the val/test metrics.

A subclass builds its network and ``forward`` (logits for a batch) and calls
``super().__init__(num_classes)``; the steps below log ``train_loss``, ``val_loss``,
``val_acc``, ``test_loss``, ``test_acc`` and macro ``test_f1`` with metrics that sync across
DDP workers.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainer.metrics import Accuracy, F1Score
from trainer.module import TrainModule

__all__ = ["Classifier"]


class Classifier(TrainModule):
    """Training, validation and test steps of a classifier whose ``forward`` returns logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.loss_fn = nn.CrossEntropyLoss()
        self.val_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.test_f1 = F1Score(task="multiclass", num_classes=num_classes, average="macro")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), on_epoch=True, sync_dist=True)
        # update(), not forward: only the epoch value is logged, so no per-batch value is
        # computed (a batch missing a class would make a per-batch macro F1 warn, too)
        self.val_acc.update(logits, y)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("test_loss", self.loss_fn(logits, y), on_epoch=True, sync_dist=True)
        self.test_acc.update(logits, y)
        self.test_f1.update(logits, y)
        self.log("test_acc", self.test_acc, on_epoch=True)
        self.log("test_f1", self.test_f1, on_epoch=True)
