"""Experiment loggers: the Logger base and the CSV logger (MLflowLogger in loggers.mlflow)."""

from trainer.loggers.base import Logger, rank_zero_only
from trainer.loggers.csv import CSVLogger

__all__ = ["CSVLogger", "Logger", "rank_zero_only"]
