"""The `Logger` base: what the Trainer calls on its loggers (rank zero only).

The Trainer calls loggers on global rank zero only; the helpers here guard code that may run
anywhere (e.g. a logger's own background flush) with :func:`rank_zero_only`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Logger", "rank_zero_only", "global_rank"]

F = TypeVar("F", bound=Callable[..., Any])


def global_rank() -> int:
    """This process's global rank from the environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def rank_zero_only(fn: F) -> F:
    """Decorator: run ``fn`` on global rank zero only; elsewhere return None."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if global_rank() == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped  # type: ignore[return-value]


class Logger:
    """Base class of experiment loggers. Subclasses override what they support.

    Attributes:
        name: experiment name.
        version: run version (int, str) or None.
        save_dir: directory where this logger writes, and where the Trainer puts checkpoints by
            default (``<save_dir>/<name>/<version>/checkpoints``), or None.
    """

    name: str = "default"
    version: str | int | None = None
    save_dir: str | None = None
    #: True: the Trainer may pass per-step values to ``log_metrics`` as 0-d tensors (possibly
    #: on an accelerator) instead of floats, so no host sync happens per step; the logger
    #: converts them when it writes, and must not change them.
    accepts_tensors: bool = False

    @property
    def log_dir(self) -> str | None:
        """Directory of this run's files (``save_dir/name/version_N``) or None."""
        return None

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record metric values (floats; 0-d tensors too where ``accepts_tensors``) at ``step``.

        Called by the Trainer on rank zero at most every ``log_every_n_steps`` train steps and at
        epoch ends.
        """

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after a ModelCheckpoint saved; reads ``.best_model_path``/``.last_model_path``."""

    def save(self) -> None:
        """Flush buffered data. The Trainer calls it at each epoch end."""

    def finalize(self, status: str, error: BaseException | None = None) -> None:
        """Close the run. ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        self.save()
