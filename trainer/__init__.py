"""trainflow's training core: TrainModule, Trainer, callbacks, loggers, metrics, export.

Knows nothing of Prefect; MLflow only in trainer.loggers.

The names below load on first use (PEP 562): importing a torch-free submodule such as
``trainer.fileio`` or ``trainer.loggers.mlflow_store`` does not import torch, so a cached
``trainflow run`` and ``trainflow --help`` never pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "TrainModule": "trainer.module",
    "Trainer": "trainer.trainer",
    "Tuner": "trainer.tuner",
    "DataModule": "trainer.datamodule",
    "Callback": "trainer.callbacks",
    "EarlyStopping": "trainer.callbacks",
    "LearningRateMonitor": "trainer.callbacks",
    "ModelCheckpoint": "trainer.callbacks",
    "ProgressBar": "trainer.callbacks",
    "Logger": "trainer.loggers",
    "CSVLogger": "trainer.loggers",
    "TensorBoardLogger": "trainer.loggers",
    "CheckpointError": "trainer.checkpoint",
    "NonFiniteLossError": "trainer.loops",
    "seed_everything": "trainer.seed",
}
__all__ = [
    "TrainModule",
    "Trainer",
    "Tuner",
    "DataModule",
    "Callback",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ProgressBar",
    "Logger",
    "CSVLogger",
    "TensorBoardLogger",
    "CheckpointError",
    "NonFiniteLossError",
    "seed_everything",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from trainer.callbacks import (
        Callback,
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        ProgressBar,
    )
    from trainer.checkpoint import CheckpointError
    from trainer.datamodule import DataModule
    from trainer.loggers import CSVLogger, Logger, TensorBoardLogger
    from trainer.loops import NonFiniteLossError
    from trainer.module import TrainModule
    from trainer.seed import seed_everything
    from trainer.trainer import Trainer
    from trainer.tuner import Tuner
