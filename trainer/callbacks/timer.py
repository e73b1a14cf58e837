"""Timer: stop fit after a time budget (``Trainer(max_time=...)`` adds one, as in Lightning).

The budget is a ``timedelta``, a dict of its keywords (``{"hours": 1}``) or ``"DD:HH:MM:SS"``.
It is checked after every training batch (``interval="step"``) or epoch; when spent,
``trainer.should_stop`` ends fit after that batch (``min_epochs`` still holds). Under DDP the
ranks agree (an all-reduce of one flag per check) so they stop at the same batch. The time
spent so far is saved in checkpoints, so a resumed run continues the same budget.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import timedelta
from typing import Any

import torch

from trainer.callbacks.base import Callback

__all__ = ["Timer", "parse_duration"]


def parse_duration(value: Any, name: str = "Trainer(max_time=...)") -> timedelta:
    """``"DD:HH:MM:SS"``, a dict of timedelta keywords, or a timedelta → timedelta."""
    if isinstance(value, timedelta):
        out = value
    elif isinstance(value, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", value.strip()):
        d, h, m, s = (int(x) for x in value.strip().split(":"))
        out = timedelta(days=d, hours=h, minutes=m, seconds=s)
    elif isinstance(value, dict):
        try:
            out = timedelta(**value)
        except TypeError as e:
            raise ValueError(f"{name}: {e} (keys of datetime.timedelta: days, hours, minutes, "
                             f"seconds, ...) (got {value!r})") from None
    else:
        raise ValueError(f"{name}: must be 'DD:HH:MM:SS', a dict like {{'hours': 1}} or a "
                         f"datetime.timedelta (got {value!r})")
    if out <= timedelta(0):
        raise ValueError(f"{name}: must be a positive duration (got {value!r})")
    return out


class Timer(Callback):
    """Stop training once ``duration`` has passed.

    Args:
        duration: the budget (see :func:`parse_duration`).
        interval: ``"step"`` (check after every training batch) or ``"epoch"``.
        verbose: print one line when the time is up.
    """

    def __init__(self, duration: Any, interval: str = "step", verbose: bool = True) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"Timer(interval=...): must be 'step' or 'epoch' (got {interval!r})")
        self.duration = parse_duration(duration, "Timer(duration=...)")
        self.interval = interval
        self.verbose = verbose
        self._offset = 0.0  # seconds spent before a resume
        self._start: float | None = None
        self._end: float | None = None

    def time_elapsed(self) -> float:
        """Seconds of training so far (this run, plus those before a resume)."""
        if self._start is None:
            return self._offset
        end = self._end if self._end is not None else time.monotonic()
        return self._offset + end - self._start

    def time_remaining(self) -> float:
        return self.duration.total_seconds() - self.time_elapsed()

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._start, self._end = time.monotonic(), None

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._end = time.monotonic()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.interval == "step":
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self.interval == "epoch":
            self._check(trainer)

    def _check(self, trainer: Any) -> None:
        up = self.time_remaining() <= 0
        strategy = trainer.strategy
        if strategy.world_size > 1:  # every rank stops at the same batch
            flag = torch.tensor(float(up), device=strategy.root_device)
            up = bool(strategy.reduce(flag, op="max").item() > 0)
        if up and not trainer.should_stop:
            trainer.should_stop = True
            if self.verbose and trainer.is_global_zero:
                print(f"Timer: the time budget of {self.duration} is spent; stopping training "
                      f"(epoch {trainer.current_epoch}, step {trainer.global_step})",
                      file=sys.stderr)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {"train": self.time_elapsed()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))
