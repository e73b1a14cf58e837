"""Experiment loggers: the Logger base, CSV and TensorBoard loggers (MLflowLogger in
loggers.mlflow)."""

from trainer.loggers.base import Logger, rank_zero_only
from trainer.loggers.csv import CSVLogger
from trainer.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "rank_zero_only"]
