"""Built-in models for tables: an MLP classifier and an MLP regressor.

Both take what ``prepare_data`` writes, a float32 matrix in feature order with categorical columns
as float codes, and do their preprocessing inside ``forward`` so an exported ONNX/TorchScript
graph takes the same raw values:

* numeric columns are standardised with the training split's mean and std (from the dataset's
  ``stats.json``; ``tasks/train.py`` passes them in) and a missing value becomes the mean (0);
* a categorical column's code indexes an embedding; a missing or unknown code (NaN, or outside
  the known categories) gets its own "unknown" row.

The regressor also standardises its target while training and undoes it in ``forward``, so its
output is one value per row in the user's units. The defaults were chosen on the tables of
``bench/tabular_quality.py`` (one setting for all of them, no per-table tuning).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.module import TrainModule

__all__ = ["TabularClassifier", "TabularRegressor"]


def _embedding_dim(cardinality: int) -> int:
    # a common rule of thumb (fast.ai's), capped: enough room for small vocabularies, no more
    return min(16, round(1.6 * (cardinality + 1) ** 0.56))


class _TabularMLP(TrainModule):
    """Shared body: input encoding (standardise / embed) → MLP → ``out_dim`` outputs."""

    def __init__(
        self,
        num_features: int,
        out_dim: int,
        feature_mean: list[float] | None,
        feature_std: list[float] | None,
        cardinalities: list[int] | None,
        hidden: int,
        depth: int,
        dropout: float,
        lr: float,
        weight_decay: float,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        cards = list(cardinalities) if cardinalities is not None else [0] * num_features
        mean = list(feature_mean) if feature_mean is not None else [0.0] * num_features
        std = list(feature_std) if feature_std is not None else [1.0] * num_features
        for key, values in (("cardinalities", cards), ("feature_mean", mean),
                            ("feature_std", std)):
            if len(values) != num_features:
                raise ValueError(f"{name}.{key}: {len(values)} values for {num_features} "
                                 "features")
        num_idx = [j for j, c in enumerate(cards) if c == 0]
        self.cat_cols = [j for j, c in enumerate(cards) if c > 0]
        self.cat_cards = [c for c in cards if c > 0]
        self.register_buffer("num_idx", torch.tensor(num_idx, dtype=torch.long))
        self.register_buffer("mean", torch.tensor([mean[j] for j in num_idx]))
        # a constant column (std 0) would divide by zero: leave it unscaled
        self.register_buffer(
            "inv_std", torch.tensor([1.0 / std[j] if std[j] > 0 else 1.0 for j in num_idx])
        )
        self.embeddings = nn.ModuleList(
            nn.Embedding(c + 1, _embedding_dim(c)) for c in self.cat_cards  # +1: unknown
        )
        with torch.no_grad():  # no training row is unknown: start it neutral, as a missing number
            for emb in self.embeddings:
                emb.weight[-1].zero_()
        width = len(num_idx) + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for _ in range(depth):
            # batch norm: measured better on the small tables (wine, breast cancer) than without
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                       nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.lr = lr
        self.weight_decay = weight_decay
        self.example_input_array = torch.zeros(2, num_features)

    def encode(self, x: Tensor) -> Tensor:
        """Raw features → the MLP's input: standardised numbers and category embeddings."""
        z = (x.index_select(1, self.num_idx) - self.mean) * self.inv_std
        parts = [torch.where(torch.isnan(z), torch.zeros_like(z), z)]
        for i, emb in enumerate(self.embeddings):
            unknown = self.cat_cards[i]
            code = x[:, self.cat_cols[i]]
            known = (code >= 0) & (code < unknown)  # False for NaN too
            code = torch.where(known, code, torch.full_like(code, unknown))
            parts.append(emb(code.long()))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class TabularClassifier(_TabularMLP):
    """MLP classifier for a table: raw features (numbers, category codes) → class logits."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        cardinalities: list[int] | None = None,
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(num_features, num_classes, feature_mean, feature_std, cardinalities,
                         hidden, depth, dropout, lr, weight_decay)
        self.save_hyperparameters()
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: Tensor) -> Tensor:
        """Logits [n, num_classes] for a batch of raw features [n, num_features]."""
        return self.net(self.encode(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), on_epoch=True, sync_dist=True)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("val_acc", acc, on_epoch=True, sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", self.loss_fn(self(x), y), on_epoch=True, sync_dist=True)


class TabularRegressor(_TabularMLP):
    """MLP regressor for a table: raw features → one value per row, in the target's units."""

    def __init__(
        self,
        num_features: int,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        cardinalities: list[int] | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(num_features, 1, feature_mean, feature_std, cardinalities,
                         hidden, depth, dropout, lr, weight_decay)
        self.save_hyperparameters()
        self.target_mean = float(target_mean)
        self.target_std = float(target_std) if target_std > 0 else 1.0

    def standardised(self, x: Tensor) -> Tensor:
        """The prediction in standard units of the target (what the loss sees), shape [n]."""
        return self.net(self.encode(x)).squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """Predictions [n] in the target's units for a batch of raw features [n, num_features]."""
        return self.standardised(x) * self.target_std + self.target_mean

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        target = (y.float() - self.target_mean) / self.target_std
        return nn.functional.mse_loss(self.standardised(x), target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(*batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # val_loss in standard units: the same scale whatever the target's units
        self.log("val_loss", self._loss(*batch), on_epoch=True, sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test_loss", self._loss(*batch), on_epoch=True, sync_dist=True)
