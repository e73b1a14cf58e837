"""The example TrainModule: a small MLP on the UCI 8x8 digits (models/data/digits.parquet).

Inputs are the 64 pixel counts (0–16) as float32; the model scales them itself, so the exported
ONNX/TorchScript graph takes raw features. Logs loss, accuracy and macro F1 for val and test
with metrics that sync across DDP workers (models/classifier.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.classifier import Classifier


class DigitsMLP(Classifier):
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
        super().__init__(num_classes)
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
        self.example_input_array = torch.zeros(2, num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of raw features."""
        return self.net(x * self.input_scale)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
