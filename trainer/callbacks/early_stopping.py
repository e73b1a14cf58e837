"""EarlyStopping: stop fit when a monitored metric stops improving."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch

from trainer.callbacks._utils import EpochActionTimer, to_float
from trainer.callbacks.base import Callback

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` when ``monitor`` has not improved for ``patience`` checks.

    Args:
        monitor: key in ``trainer.callback_metrics`` (e.g. ``"val_loss"``).
        min_delta: smallest change that counts as an improvement (absolute, >= 0).
        patience: checks without improvement before stopping. A check happens in
            ``on_validation_end`` when validation runs this epoch, else in ``on_train_epoch_end``
            (``check_on_train_epoch_end`` forces one of them).
        mode: ``"min"`` (lower is better) or ``"max"``.
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        verbose: log improvements and the reason for stopping.
        strict: raise when ``monitor`` is not among the logged metrics (else skip the check).
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        mode: Literal["min", "max"] = "min",
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        verbose: bool = False,
        strict: bool = True,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"EarlyStopping.monitor: must be a logged metric name (got {monitor!r})"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping.mode: must be 'min' or 'max' (got {mode!r})")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping.min_delta: must be >= 0 (got {min_delta})")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping.patience: must be an int >= 0 (got {patience!r})")
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.patience = patience
        self.mode = mode
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.verbose = verbose
        self.strict = strict
        self._timer = EpochActionTimer(check_on_train_epoch_end)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopping_reason: str | None = None
        self._fitting = False

    def _state_key_args(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode}

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = to_float(state_dict["best_score"])
        self.patience = int(state_dict.get("patience", self.patience))

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self._fitting = stage == "fit"

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        if stage == "fit":
            self._fitting = False

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._fitting and self._timer.act_on_train_epoch_end(trainer):
            self._check(trainer)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if not self._fitting or trainer.sanity_checking:
            return
        if self._timer.note_validation_end(trainer):
            self._check(trainer)

    # ------------------------------------------------------------------ logic
    def _improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best_score - self.min_delta
        return current > self.best_score + self.min_delta

    def _evaluate(self, current: float) -> tuple[bool, str | None]:
        """(should_stop, reason) for one new value; updates best_score and wait_count."""
        better = (lambda a, b: a < b) if self.mode == "min" else (lambda a, b: a > b)
        if self.check_finite and not math.isfinite(current):
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite; previous best "
                f"{self.best_score:.6g}. Stopping."
            )
        if self.stopping_threshold is not None and better(current, self.stopping_threshold):
            return True, (
                f"Stopping threshold reached: {self.monitor} = {current:.6g} "
                f"{'<' if self.mode == 'min' else '>'} {self.stopping_threshold}. Stopping."
            )
        if self.divergence_threshold is not None and better(self.divergence_threshold, current):
            return True, (
                f"Divergence threshold reached: {self.monitor} = {current:.6g} "
                f"{'>' if self.mode == 'min' else '<'} {self.divergence_threshold}. Stopping."
            )
        if self._improved(current):
            previous = self.best_score
            self.best_score = current
            self.wait_count = 0
            if math.isfinite(previous):
                return False, (
                    f"Metric {self.monitor} improved by {abs(previous - current):.6g} "
                    f">= min_delta = {self.min_delta}. New best score: {current:.6g}"
                )
            return False, f"Metric {self.monitor} improved. New best score: {current:.6g}"
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} "
                f"checks. Best score: {self.best_score:.6g}. Stopping."
            )
        return False, None

    def _check(self, trainer: Any) -> None:
        if getattr(trainer, "fast_dev_run", False):
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            if self.strict:
                raise KeyError(
                    f"EarlyStopping(monitor={self.monitor!r}): the key is not among the logged "
                    f"metrics {sorted(metrics)}; log it with self.log({self.monitor!r}, value) "
                    "in the module, fix `monitor`, or pass strict=False to skip the check"
                )
            if self.verbose:
                log.warning("EarlyStopping: %r not logged; check skipped", self.monitor)
            return
        current = to_float(metrics[self.monitor])
        should_stop, reason = self._evaluate(current)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None:  # any rank that wants to stop stops every rank
            flag = torch.tensor(float(should_stop), device=getattr(strategy, "root_device", "cpu"))
            should_stop = bool(strategy.reduce(flag, op="max").item() > 0)
        if should_stop:
            self.stopped_epoch = int(trainer.current_epoch)
            self.stopping_reason = reason
            trainer.should_stop = True
        if reason and self.verbose and trainer.is_global_zero:
            log.info("%s", reason)
