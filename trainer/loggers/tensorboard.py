"""TensorBoardLogger: event files for ``tensorboard --logdir``, as Lightning's logger writes them.

Files live in ``<save_dir>/<name>/version_<N>/`` (the same numbering as CSVLogger): the event file
that ``torch.utils.tensorboard.SummaryWriter`` writes, and ``hparams.yaml``. Needs the
``tensorboard`` package (``pip install 'trainflow[tensorboard]'``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import yaml

from trainer.fileio import atomic_write_text
from trainer.loggers.base import global_rank, rank_zero_only
from trainer.loggers.csv import CSVLogger, _plain

__all__ = ["TensorBoardLogger"]


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"opt": {"lr": 0.1}} → {"opt/lr": 0.1}: TensorBoard's hparams plugin takes flat keys."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out


def _hparam_value(v: Any) -> Any:
    """What the hparams plugin accepts: bool, int/float, str; tensors as numbers; others as str."""
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        v = v.item()
    return v if isinstance(v, bool | int | float | str) else str(v)


class _NoOpExperiment:
    """What ``experiment`` is on ranks other than zero: any method call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class TensorBoardLogger(CSVLogger):
    """Log metrics and hyperparameters to TensorBoard event files.

    It takes CSVLogger's folder layout and hparams.yaml (the same ``version_N`` numbering) and
    writes event files instead of ``metrics.csv``.

    Args:
        save_dir: root directory.
        name: experiment name (a sub-directory); ``""`` or None: no sub-directory.
        version: int → ``version_<N>``; str → that directory name; None → next free number.
        default_hp_metric: as Lightning, log ``hp_metric = -1`` with the hyperparameters so the
            HPARAMS tab shows the run (log a real ``hp_metric`` to replace it).

    ``experiment`` is the ``SummaryWriter`` (``self.logger.experiment.add_image(...)``).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        default_hp_metric: bool = True,
    ) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the tensorboard package: "
                "pip install 'trainflow[tensorboard]'")
        super().__init__(save_dir, name, version)
        self.default_hp_metric = default_hp_metric
        self._writer: Any = None

    @property
    def experiment(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter`` of this run (created on first use); on
        other ranks than zero an object whose every method does nothing, as in Lightning, so
        ``self.logger.experiment.add_image(...)`` runs everywhere."""
        if global_rank() != 0:
            return _NoOpExperiment()
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Any,
                        metrics: dict[str, float] | None = None) -> None:
        if not isinstance(params, dict):
            params = vars(params)
        self.hparams.update(params)
        os.makedirs(self.log_dir, exist_ok=True)
        atomic_write_text(os.path.join(self.log_dir, self.HPARAMS_FILE),
                           yaml.safe_dump(_plain(self.hparams), sort_keys=False))
        if metrics is None and self.default_hp_metric:
            metrics = {"hp_metric": -1}
        if not params and not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = {k: _hparam_value(v) for k, v in _flatten(params).items()}
        exp, ssi, sei = hparams(flat, dict(metrics or {}))
        writer = self.experiment.file_writer
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        if metrics:
            self.log_metrics(metrics, 0)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        writer = self.experiment
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, Mapping):
                writer.add_scalars(key, dict(value), step)
            else:
                writer.add_scalar(key, value, step)

    @rank_zero_only
    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    @rank_zero_only
    def finalize(self, status: str, error: BaseException | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_writer"] = None  # a writer (thread, open file) does not travel to DDP workers
        return state
