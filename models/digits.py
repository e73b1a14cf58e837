"""The example TrainModule: a small MLP on the UCI 8x8 digits (models/data/digits.parquet).

Inputs are the 64 pixel counts (0–16) as float32; the model scales them itself, so the exported
ONNX/TorchScript graph takes raw features. Logs loss, accuracy and macro F1 for val and test
with metrics that sync across DDP workers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.metrics import Accuracy, F1Score
from trainer.module import TrainModule


class DigitsMLP(TrainModule):
    """MLP classifier: features → hidden (ReLU, dropout) × depth → classes."""

    def __init__(
        self,
        num_features: int = 64,
        num_classes: int = 10,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        input_scale: float = 1 / 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.input_scale = input_scale
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss_fn = nn.CrossEntropyLoss()
        self.val_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.test_f1 = F1Score(task="multiclass", num_classes=num_classes, average="macro")
        self.example_input_array = torch.zeros(2, num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of raw features."""
        return self.net(x * self.input_scale)

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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
