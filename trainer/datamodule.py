"""DataModule: the data side of an experiment in one object (Lightning's shape)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

__all__ = ["DataModule"]


class DataModule:
    """Write ``prepare_data`` (once, e.g. download), ``setup(stage)`` and the loaders you need.

    The Trainer calls ``prepare_data()`` then ``setup(stage)`` with stage in
    'fit' | 'validate' | 'test' | 'predict', then asks for the loaders, and ``teardown(stage)``
    at the end. Keep it picklable (worker processes rebuild it).
    """

    def __init__(self) -> None:
        self.trainer: Any = None
        self.hparams: dict[str, Any] = {}

    def prepare_data(self) -> None:
        """Download / write files. Called once per node before setup."""

    def setup(self, stage: str) -> None:
        """Build datasets for ``stage``."""

    def teardown(self, stage: str) -> None:
        """Release what setup built."""

    def train_dataloader(self) -> DataLoader | Any:
        raise NotImplementedError(f"{type(self).__name__}.train_dataloader is not written")

    def val_dataloader(self) -> DataLoader | Any:
        return None

    def test_dataloader(self) -> DataLoader | Any:
        raise NotImplementedError(f"{type(self).__name__}.test_dataloader is not written")

    def predict_dataloader(self) -> DataLoader | Any:
        raise NotImplementedError(f"{type(self).__name__}.predict_dataloader is not written")

    def state_dict(self) -> dict[str, Any]:
        """Extra state to store in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
