"""A non-tabular example: a small CNN on the 8x8 digits as 1x8x8 images, fed by a DataModule.

``configs/digits_cnn.yaml`` names both: ``data.datamodule: models.digits_cnn:DigitsImages`` turns
the prepared splits (64 pixel columns per row) into image batches, ``model.class_path`` the CNN.
The exported ONNX/TorchScript graphs take [n, 1, 8, 8] raw pixel counts (0-16).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from models.classifier import Classifier
from trainer.datamodule import DataModule


class DigitsImages(DataModule):
    """The prepared digit splits as 1x8x8 images (the pixel columns in row-major order)."""

    def __init__(self, data: Any, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.data = data  # a tasks.types.DatasetRef: paths to the parquet splits
        self.batch_size = batch_size
        self.seed = seed

    def _loader(self, split: str, shuffle: bool) -> DataLoader | None:
        from tasks.prepare_data import load_split

        if self.data.splits[split].rows == 0:
            return None
        x, y = load_split(self.data, split)
        if x.shape[1] != 64:
            raise ValueError(f"DigitsImages: expects 64 pixel columns, the data has {x.shape[1]}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            images = torch.from_numpy(x).reshape(-1, 1, 8, 8)
        labels = torch.from_numpy(np.ascontiguousarray(y))
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size,
                          shuffle=shuffle, generator=gen)

    def train_dataloader(self) -> DataLoader | None:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader | None:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader | None:
        return self._loader("test", False)


class DigitsCNN(Classifier):
    """Two 3x3 convolutions, a pooling step and a linear head; scales the pixels itself."""

    def __init__(self, num_classes: int = 10, channels: int = 16, lr: float = 3e-3) -> None:
        super().__init__(num_classes)
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Flatten(),
            nn.Linear(channels * 16, num_classes),
        )
        self.lr = lr
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of [n, 1, 8, 8] raw pixel counts."""
        return self.net(x / 16)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)
