"""Experiment loggers: the Logger base and the CSV logger (MLflowLogger in loggers.mlflow)."""

from trainer.loggers.base import Logger, rank_zero_only

__all__ = ["Logger", "rank_zero_only"]
