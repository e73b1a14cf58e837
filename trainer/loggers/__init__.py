"""Experiment loggers: the Logger base, CSV and TensorBoard loggers (MLflowLogger in
loggers.mlflow). The MLflow store helpers (``loggers.mlflow_store``) need no torch: the names
below load on first use (PEP 562), so importing that module does not import torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Logger": "trainer.loggers.base",
    "rank_zero_only": "trainer.loggers.base",
    "CSVLogger": "trainer.loggers.csv",
    "TensorBoardLogger": "trainer.loggers.tensorboard",
}
__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "rank_zero_only"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'trainer.loggers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from trainer.loggers.base import Logger, rank_zero_only
    from trainer.loggers.csv import CSVLogger
    from trainer.loggers.tensorboard import TensorBoardLogger
