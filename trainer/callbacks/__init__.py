"""Callbacks the Trainer calls around its loop."""

from trainer.callbacks.base import HOOK_NAMES, Callback, overridden_hooks
from trainer.callbacks.early_stopping import EarlyStopping
from trainer.callbacks.lr_monitor import LearningRateMonitor
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.callbacks.progress import ProgressBar
from trainer.callbacks.timer import Timer

__all__ = [
    "Callback",
    "EarlyStopping",
    "HOOK_NAMES",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ProgressBar",
    "Timer",
    "overridden_hooks",
]
