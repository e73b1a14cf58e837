"""trainflow's training core: TrainModule, Trainer, callbacks, loggers, metrics, export.

Knows nothing of Prefect; MLflow only in trainer.loggers.
"""

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
