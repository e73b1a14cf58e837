"""Small helpers shared by the callbacks: when to act in an epoch, metric conversion."""

from __future__ import annotations

import math
from typing import Any

import torch


def total_batches(trainer: Any, attr: str) -> float:
    """Batches over all dataloaders of ``trainer.<attr>`` (a count or a list of counts per
    dataloader, as ``num_val_batches``); 0 when the trainer has none."""
    n = getattr(trainer, attr, 0)
    if isinstance(n, list | tuple):
        return float(sum(n))
    return float(n or 0)


def sum_val_batches(trainer: Any) -> float:
    """Total validation batches per validation run (0 when there is no validation data)."""
    return total_batches(trainer, "num_val_batches")


class EpochActionTimer:
    """Decides whether a monitor-type callback acts in on_validation_end or on_train_epoch_end.

    With ``on_train_epoch_end=None`` (the default) it follows Lightning: a validation that ends
    inside an epoch (``val_check_interval`` < the epoch) is acted on at once, in
    ``on_validation_end``; the validation at an epoch's end is acted on in that epoch's
    ``on_train_epoch_end``, which the Trainer calls after the epoch's metrics are computed, so
    both ``val_*`` and the training epoch metrics are current; a fit without validation data
    acts in ``on_train_epoch_end``; epochs of a fit with validation in which validation does not
    run (``check_val_every_n_epoch`` > 1) do not act (the monitored ``val_*`` would be stale);
    with ``act_on_cut_epoch`` (ModelCheckpoint) an epoch cut short before its end-of-epoch
    validation (``max_steps``) acts in ``on_train_epoch_end``.
    ``True``/``False`` force ``on_train_epoch_end``/``on_validation_end``.
    """

    def __init__(self, on_train_epoch_end: bool | None, act_on_cut_epoch: bool = False) -> None:
        self.on_train_epoch_end = on_train_epoch_end
        self.act_on_cut_epoch = act_on_cut_epoch
        self._pending = False  # an end-of-epoch validation waits for on_train_epoch_end
        self._val_ran = False

    def note_validation_end(self, trainer: Any) -> bool:
        """Record a (non-sanity, fit-time) validation end; return whether to act now."""
        self._val_ran = True
        if self.on_train_epoch_end is not None:
            return not self.on_train_epoch_end
        if _at_epoch_end(trainer):
            self._pending = True
            return False
        return True

    def act_on_train_epoch_end(self, trainer: Any) -> bool:
        """Whether to act at this train epoch end."""
        pending, self._pending = self._pending, False
        if self.on_train_epoch_end is not None:
            return self.on_train_epoch_end
        if pending or sum_val_batches(trainer) <= 0:
            return True
        # an epoch cut short (max_steps, a -1 from on_train_batch_start) ran no end-of-epoch
        # validation; a checkpoint still wants the state training ended in
        return self.act_on_cut_epoch and not _at_epoch_end(trainer)

    def validation_has_run(self) -> bool:
        """Whether any fit-time validation has ended so far."""
        return self._val_ran


def _at_epoch_end(trainer: Any) -> bool:
    """Whether the train loop has consumed the epoch's last batch (validation at epoch end)."""
    fit_loop = getattr(trainer, "fit_loop", None)
    batch_idx = getattr(fit_loop, "batch_idx", None)
    total = getattr(trainer, "num_training_batches", None)
    if batch_idx is None or total is None:
        return False
    try:
        total = float(total)
    except (TypeError, ValueError):
        return False
    return not math.isinf(total) and int(batch_idx) + 1 >= total


def to_float(value: Any) -> float:
    """A logged value (tensor, number) as a Python float."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().cpu().item())
    return float(value)


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
