"""LearningRateMonitor: log each optimizer's learning rate (and momentum) through the loggers."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

import torch

from trainer.callbacks.base import Callback

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Log ``lr-<OptimizerName>[-pgN]`` (and ``...-momentum``) to every logger of the Trainer.

    Args:
        logging_interval: ``"step"`` (at most every ``log_every_n_steps`` optimizer steps),
            ``"epoch"`` (at each train epoch start), or None: each scheduler at its own
            interval, and optimizers without a scheduler at every log step.
        log_momentum: also log ``momentum`` (SGD) or ``betas[0]`` (Adam-style).
        log_weight_decay: also log ``weight_decay``.

    Names: ``lr-<OptimizerClass>`` for one param group, ``lr-<OptimizerClass>-pg<i>`` for
    several, a ``-<n>`` suffix when two optimizers share a class, the scheduler config's ``name``
    when given. Values are also kept in ``self.lrs`` (name → list of floats).
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(
                "LearningRateMonitor.logging_interval: must be None, 'step' or 'epoch' "
                f"(got {logging_interval!r})"
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = defaultdict(list)
        self._last_step_logged = -1

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "loggers", None):
            raise RuntimeError(
                "LearningRateMonitor: the Trainer has no logger to log learning rates to; pass "
                "logger=CSVLogger(...) (or another Logger) to the Trainer, or drop the callback"
            )
        self._last_step_logged = -1

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        step = int(trainer.global_step)
        every = int(getattr(trainer, "log_every_n_steps", 1) or 1)
        if step % every != 0 or step == self._last_step_logged:
            return  # accumulation: several batches share one optimizer step
        self._last_step_logged = step
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if self.logging_interval == "step":
            return
        self._log(trainer, "epoch" if self.logging_interval is None else "any")

    # ------------------------------------------------------------------ internals
    def _log(self, trainer: Any, interval: str) -> None:
        stats = self.extract_stats(trainer, interval)
        if not stats:
            return
        for name, value in stats.items():
            self.lrs[name].append(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=int(trainer.global_step))

    def extract_stats(self, trainer: Any, interval: str) -> dict[str, float]:
        """Current values of the optimizers whose scheduler steps at ``interval``.

        ``interval`` is ``"step"``, ``"epoch"`` or ``"any"``; optimizers with no scheduler are
        included at ``"step"`` and ``"any"``.
        """
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
        names = self._names(optimizers, configs)
        scheduled: dict[int, Any] = {}
        for config in configs:
            opt = getattr(config.scheduler, "optimizer", None)
            if opt is not None:
                scheduled[id(opt)] = config
        stats: dict[str, float] = {}
        for opt in optimizers:
            config = scheduled.get(id(opt))
            if config is not None:
                if interval not in (getattr(config, "interval", "epoch"), "any"):
                    continue
            elif interval == "epoch":
                continue
            stats.update(self._optimizer_stats(opt, names[id(opt)]))
        return stats

    def _names(self, optimizers: list[Any], configs: list[Any]) -> dict[int, list[str]]:
        """Per optimizer (by id): one metric base name per param group."""
        given: dict[int, str] = {}
        for config in configs:
            opt = getattr(config.scheduler, "optimizer", None)
            name = getattr(config, "name", None)
            if opt is not None and name:
                given[id(opt)] = str(name)
        seen: dict[str, int] = {}
        out: dict[int, list[str]] = {}
        for opt in optimizers:
            base = given.get(id(opt)) or f"lr-{type(opt).__name__}"
            count = seen.get(base, 0)
            seen[base] = count + 1
            if count:
                base = f"{base}-{count}"
            groups = opt.param_groups
            if len(groups) == 1:
                out[id(opt)] = [base]
            else:
                out[id(opt)] = [
                    f"{base}/{g['name']}" if g.get("name") else f"{base}-pg{i}"
                    for i, g in enumerate(groups)
                ]
        return out

    def _optimizer_stats(self, optimizer: Any, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        for group, name in zip(optimizer.param_groups, names):
            stats[name] = _as_float(group["lr"])
            if self.log_momentum:
                if "betas" in group:
                    stats[f"{name}-momentum"] = _as_float(group["betas"][0])
                else:
                    stats[f"{name}-momentum"] = _as_float(group.get("momentum", 0.0))
            if self.log_weight_decay and "weight_decay" in group:
                stats[f"{name}-weight_decay"] = _as_float(group["weight_decay"])
        return stats


def _as_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.item())
    return float(value)
