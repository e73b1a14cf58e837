"""Small helpers shared by the callbacks: when to act in an epoch, metric conversion."""

from __future__ import annotations

import math
from typing import Any

import torch


def sum_val_batches(trainer: Any) -> float:
    """Total validation batches per validation run (0 when there is no validation data)."""
    n = getattr(trainer, "num_val_batches", 0)
    if isinstance(n, list | tuple):
        return float(sum(n))
    return float(n or 0)


def validation_runs_this_epoch(trainer: Any) -> bool:
    """Whether the fit loop runs validation in the current epoch (from the Trainer's flags)."""
    if sum_val_batches(trainer) <= 0:
        return False
    every = getattr(trainer, "check_val_every_n_epoch", 1)
    if every is None:
        return True
    return (int(trainer.current_epoch) + 1) % int(every) == 0


class EpochActionTimer:
    """Decides whether a monitor-type callback acts in on_validation_end or on_train_epoch_end.

    The contract: act in ``on_validation_end`` when validation runs this epoch, else in
    ``on_train_epoch_end``. ``on_train_epoch_end=True/False`` forces one of the two.
    """

    def __init__(self, on_train_epoch_end: bool | None) -> None:
        self.on_train_epoch_end = on_train_epoch_end
        self._val_ran_epoch: int | None = None

    def note_validation_end(self, trainer: Any) -> bool:
        """Record a (non-sanity) validation end; return whether to act now."""
        self._val_ran_epoch = int(trainer.current_epoch)
        return self.on_train_epoch_end is not True

    def act_on_train_epoch_end(self, trainer: Any) -> bool:
        """Whether to act at this train epoch end."""
        if self.on_train_epoch_end is not None:
            return self.on_train_epoch_end
        if self._val_ran_epoch == int(trainer.current_epoch):
            return False  # validation ran (and acted) during this epoch
        return not validation_runs_this_epoch(trainer)

    def validation_has_run(self) -> bool:
        """Whether any fit-time validation has ended so far."""
        return self._val_ran_epoch is not None


def to_float(value: Any) -> float:
    """A logged value (tensor, number) as a Python float."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().cpu().item())
    return float(value)


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
