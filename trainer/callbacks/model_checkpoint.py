"""ModelCheckpoint: save checkpoints periodically, keep the top-k by a monitored metric.

Saves go through ``trainer.save_checkpoint(path)``: every rank calls it, rank zero writes, and the
write is atomic (temp file, fsync, rename), so ``last.ckpt`` is always a whole checkpoint even when
the process is killed mid-save. Files are removed on rank zero only, and only those this callback
wrote into its own ``dirpath``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from typing import Any, Literal

import torch

from trainer.callbacks._utils import EpochActionTimer, sum_val_batches, to_float
from trainer.callbacks.base import Callback

__all__ = ["ModelCheckpoint"]

log = logging.getLogger(__name__)

_MODES = ("min", "max")


class ModelCheckpoint(Callback):
    """Save the model periodically during fit and keep the best ``save_top_k`` checkpoints.

    Args:
        dirpath: directory of the checkpoint files. Default: ``<logger.save_dir>/<name>/<version>/
            checkpoints`` of the first logger, else ``<trainer.default_root_dir>/checkpoints``.
        filename: name template without extension, with metric names in braces, e.g.
            ``"{epoch}-{val_loss:.3f}"`` → ``epoch=2-val_loss=0.123.ckpt``. ``epoch`` and ``step``
            are always available. Default ``"{epoch}-{step}"``.
        monitor: metric key in ``trainer.callback_metrics`` to rank checkpoints by; None keeps
            the latest ``save_top_k`` saves.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher monitored value is better.
        save_top_k: how many checkpoints to keep (``-1``: all, ``0``: none but ``last``).
        save_last: also write ``last.ckpt`` after every save trigger (mid-epoch ones included),
            the checkpoint a resume starts from.
        every_n_epochs: save at the end of every N-th epoch (default 1 unless
            ``every_n_train_steps`` is given; 0 disables).
        every_n_train_steps: save every N optimizer steps, in ``on_train_batch_end``.
        save_on_train_epoch_end: epoch saves in ``on_train_epoch_end`` (True), in
            ``on_validation_end`` (False), or (None) in ``on_validation_end`` when validation
            runs in this epoch, else in ``on_train_epoch_end``.
        auto_insert_metric_name: ``{epoch}`` → ``epoch=3`` (True) or ``3`` (False).
        verbose: log each save decision.
    """

    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        auto_insert_metric_name: bool = True,
        verbose: bool = False,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"ModelCheckpoint.mode: must be 'min' or 'max' (got {mode!r})")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(
                f"ModelCheckpoint.save_top_k: must be an int >= -1 (got {save_top_k!r}); "
                "-1 keeps every checkpoint, 0 keeps none but last.ckpt"
            )
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): ranking more than one "
                "checkpoint needs a metric; pass monitor='val_loss' (or another logged key), or "
                "save_top_k=-1 to keep every checkpoint"
            )
        for flag, value in (
            ("every_n_epochs", every_n_epochs),
            ("every_n_train_steps", every_n_train_steps),
        ):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"ModelCheckpoint.{flag}: must be an int >= 0 (got {value!r})")
        if every_n_train_steps is None:
            every_n_train_steps = 0
        if every_n_epochs is None:
            every_n_epochs = 0 if every_n_train_steps > 0 else 1

        self.dirpath: str | None = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.auto_insert_metric_name = auto_insert_metric_name
        self.verbose = verbose
        self._timer = EpochActionTimer(save_on_train_epoch_end, act_on_cut_epoch=True)

        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value: torch.Tensor = self._worst_value()
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.current_score: torch.Tensor | None = None
        self.last_model_path = ""
        self._last_global_step_saved = -1
        self._last_checkpoint_saved = ""
        self._fitting = False
        self._warned_missing = False

    def _worst_value(self) -> torch.Tensor:
        return torch.tensor(math.inf if self.mode == "min" else -math.inf, dtype=torch.float64)

    # ------------------------------------------------------------------ identity and state
    def _state_key_args(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "every_n_train_steps": self.every_n_train_steps,
            "every_n_epochs": self.every_n_epochs,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        dirpath_from_ckpt = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or dirpath_from_ckpt == self.dirpath:
            self.dirpath = dirpath_from_ckpt
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self._worst_value())
            self.last_model_path = state_dict.get("last_model_path", "")
            self.best_model_score = state_dict.get("best_model_score")
            self.current_score = state_dict.get("current_score")
        else:
            warnings.warn(
                f"ModelCheckpoint: the checkpoint was saved with dirpath={dirpath_from_ckpt!r}, "
                f"this callback uses dirpath={self.dirpath!r}; only best_model_path is restored "
                "and top-k tracking starts afresh",
                stacklevel=2,
            )
        self.best_model_path = state_dict.get("best_model_path", "")
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", -1))

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self._fitting = stage == "fit"
        if not self._fitting:
            return
        dirpath = self.dirpath if self.dirpath is not None else self._default_dirpath(trainer)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None:  # every rank must agree on rank zero's choice
            dirpath = strategy.broadcast_object(dirpath)
        self.dirpath = os.path.abspath(os.fspath(dirpath))

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        if stage == "fit":
            self._fitting = False

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.every_n_train_steps
        if n < 1 or not self._fitting or trainer.sanity_checking:
            return
        step = trainer.global_step
        if step % n != 0 or step == self._last_global_step_saved:
            return
        self._save_all(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._timer.act_on_train_epoch_end(trainer):
            self._epoch_trigger(trainer)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if not self._fitting or trainer.sanity_checking:
            return
        if self._timer.note_validation_end(trainer):
            self._epoch_trigger(trainer)

    # ------------------------------------------------------------------ decisions
    def _epoch_trigger(self, trainer: Any) -> None:
        if not self._fitting or trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        n = self.every_n_epochs
        if n < 1 or (trainer.current_epoch + 1) % n != 0:
            return
        if trainer.global_step == self._last_global_step_saved:
            return
        self._save_all(trainer)

    def _save_all(self, trainer: Any) -> None:
        candidates = self._monitor_candidates(trainer)
        if self.save_top_k != 0:
            if self.monitor is None:
                self._save_none_monitor(trainer, candidates)
            else:
                self._save_monitor(trainer, candidates)
        if self.save_last:
            self._save_last(trainer, candidates)

    def _monitor_candidates(self, trainer: Any) -> dict[str, Any]:
        candidates = dict(trainer.callback_metrics)
        candidates.setdefault("epoch", torch.tensor(int(trainer.current_epoch)))
        candidates.setdefault("step", torch.tensor(int(trainer.global_step)))
        return candidates

    def _save_none_monitor(self, trainer: Any, candidates: dict[str, Any]) -> None:
        filepath = self._unique_filepath(candidates, trainer)
        previous = self.best_model_path
        self.best_model_path = filepath
        if self.save_top_k == -1:
            self.best_k_models[filepath] = torch.tensor(float(trainer.global_step))
        self._save(trainer, filepath)
        if self.save_top_k == 1 and previous and previous != filepath:
            self._remove(trainer, previous)

    def _save_monitor(self, trainer: Any, candidates: dict[str, Any]) -> None:
        if self.monitor not in candidates:
            available = sorted(k for k in candidates if k not in ("epoch", "step"))
            msg = (
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find the key in the logged "
                f"metrics {available}; log it with self.log({self.monitor!r}, value) in the "
                "module, or fix `monitor`"
            )
            if self._timer.validation_has_run() or sum_val_batches(trainer) <= 0:
                raise KeyError(msg)
            if not self._warned_missing:  # saves before the first validation: skip them
                warnings.warn(msg + " (skipping this save until it appears)", stacklevel=2)
                self._warned_missing = True
            return
        value = to_float(candidates[self.monitor])
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and getattr(strategy, "world_size", 1) > 1:
            # every rank must take the same save decision (saving is collective): rank zero's
            # value decides, whatever a metric logged without sync_dist holds elsewhere
            value = float(strategy.broadcast_object(value))
        if math.isnan(value):  # NaN ranks last
            value = math.inf if self.mode == "min" else -math.inf
        current = torch.tensor(value, dtype=torch.float64)
        self.current_score = current
        if self._check_top_k(current):
            self._update_best_and_save(trainer, current, candidates)
        elif self.verbose:
            log.info(
                "Epoch %d, global step %d: %r was not in top %d",
                trainer.current_epoch,
                trainer.global_step,
                self.monitor,
                self.save_top_k,
            )

    def _check_top_k(self, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        return bool(self._better(current, self.best_k_models[self.kth_best_model_path]))

    def _better(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        a, b = a.double().cpu(), b.double().cpu()
        return bool(a < b) if self.mode == "min" else bool(a > b)

    def _update_best_and_save(
        self, trainer: Any, current: torch.Tensor, candidates: dict[str, Any]
    ) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        to_remove = ""
        if len(self.best_k_models) == k and k > 0:
            to_remove = self.kth_best_model_path
            self.best_k_models.pop(to_remove)
        filepath = self._unique_filepath(candidates, trainer, replacing=to_remove)
        self.best_k_models[filepath] = current
        if len(self.best_k_models) == k:  # the worst of the kept ones is the next to go
            pick = max if self.mode == "min" else min
            self.kth_best_model_path = pick(
                self.best_k_models, key=lambda p: float(self.best_k_models[p])
            )
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        pick_best = min if self.mode == "min" else max
        self.best_model_path = pick_best(
            self.best_k_models, key=lambda p: float(self.best_k_models[p])
        )
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            log.info(
                "Epoch %d, global step %d: %r reached %.5f (best %.5f), saving %s",
                trainer.current_epoch,
                trainer.global_step,
                self.monitor,
                float(current),
                float(self.best_model_score),
                filepath,
            )
        self._save(trainer, filepath)
        if to_remove and to_remove != filepath:
            self._remove(trainer, to_remove)

    def _save_last(self, trainer: Any, candidates: dict[str, Any]) -> None:
        filepath = self.format_checkpoint_name(
            candidates, filename=self.CHECKPOINT_NAME_LAST, auto_insert=False
        )
        self.last_model_path = filepath
        self._save(trainer, filepath)

    # ------------------------------------------------------------------ files
    def _save(self, trainer: Any, filepath: str) -> None:
        trainer.save_checkpoint(filepath)
        self._last_global_step_saved = int(trainer.global_step)
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in getattr(trainer, "loggers", None) or []:
                logger.after_save_checkpoint(self)

    def _remove(self, trainer: Any, filepath: str) -> None:
        if not trainer.is_global_zero or not filepath:
            return
        keep = (self.last_model_path, self.best_model_path)
        if filepath in keep or filepath in self.best_k_models:
            return
        if self.dirpath is None or not _inside(filepath, self.dirpath):
            return  # never delete a file outside our own directory
        try:
            os.remove(filepath)
        except FileNotFoundError:
            pass

    def _default_dirpath(self, trainer: Any) -> str:
        loggers = getattr(trainer, "loggers", None) or []
        root = os.fspath(getattr(trainer, "default_root_dir", None) or os.getcwd())
        if loggers:
            first = loggers[0]
            save_dir = first.save_dir or root
            version = first.version
            version = version if isinstance(version, str) else f"version_{version}"
            return os.path.join(save_dir, str(first.name), version, "checkpoints")
        return os.path.join(root, "checkpoints")

    def _unique_filepath(
        self, candidates: dict[str, Any], trainer: Any, replacing: str = ""
    ) -> str:
        filepath = self.format_checkpoint_name(candidates)
        version = 1
        while filepath != replacing and (
            filepath in self.best_k_models
            or (filepath == self.last_model_path)
            or (
                os.path.exists(filepath)
                and filepath != self._last_checkpoint_saved
                and filepath != self.best_model_path
            )
        ):
            filepath = self.format_checkpoint_name(candidates, version=version)
            version += 1
        return filepath

    # ------------------------------------------------------------------ names
    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        version: int | None = None,
        auto_insert: bool | None = None,
    ) -> str:
        """The checkpoint path for ``metrics``: ``dirpath/<formatted filename>[-vN].ckpt``."""
        name = self._format_filename(
            self.filename if filename is None else filename,
            metrics,
            self.auto_insert_metric_name if auto_insert is None else auto_insert,
        )
        if version is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{version}"
        return os.path.join(self.dirpath or "", name + self.FILE_EXTENSION)

    @classmethod
    def _format_filename(
        cls, filename: str | None, metrics: dict[str, Any], auto_insert: bool
    ) -> str:
        if not filename:
            filename = "{epoch}" + cls.CHECKPOINT_JOIN_CHAR + "{step}"
        groups = re.findall(r"(\{.*?)[:\}]", filename)
        # "{val/loss:.3f}" → metric key "val/loss"; python's format needs an identifier
        values: dict[str, Any] = {}
        for i, group in enumerate(sorted(set(groups), key=len, reverse=True)):
            key = group[1:]
            slot = f"_m{i}_"
            shown = key.replace("/", "_")  # a metric key with '/' must not make a directory
            replacement = (
                f"{shown}{cls.CHECKPOINT_EQUALS_CHAR}" + "{" + slot if auto_insert else "{" + slot
            )
            filename = filename.replace(group + ":", replacement + ":").replace(
                group + "}", replacement + "}"
            )
            value = metrics.get(key, 0)
            if key not in metrics:
                warnings.warn(
                    f"ModelCheckpoint: filename {filename!r} names {key!r}, which is not in the "
                    f"logged metrics {sorted(metrics)}; 0 is used",
                    stacklevel=3,
                )
            if isinstance(value, torch.Tensor):
                value = value.item()
            values[slot] = value
        return filename.format(**values)


def _inside(path: str, directory: str) -> bool:
    """Whether ``path`` lies inside ``directory`` (sub-directories included)."""
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    try:
        return os.path.commonpath([path, directory]) == directory and path != directory
    except ValueError:  # different drives
        return False
