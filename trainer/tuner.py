"""Tuner: Lightning's learning-rate finder and batch-size scaler.

``Tuner(trainer).lr_find(module, train_dataloaders=...)`` trains ``num_training`` steps while the
learning rate grows from ``min_lr`` to ``max_lr`` (exponentially or linearly), records the
smoothed loss at each, and suggests the rate where the loss falls fastest. The module's weights
are put back afterwards, and with ``update_attr`` its ``lr`` / ``learning_rate`` (attribute or
hparams) is set to the suggestion.

``Tuner(trainer).scale_batch_size(module, mode="power" | "binsearch")`` tries a few training
steps at growing batch sizes (the module's or datamodule's ``batch_size``, which its
``train_dataloader()`` must read) until one runs out of memory or covers the whole dataset, and
keeps the largest that worked ("binsearch" then searches between the last good and the first
bad size). Weights are put back here too.

Both run the trials in a separate, quiet Trainer with the given Trainer's device, strategy and
precision flags, so the given Trainer's own state (steps, callbacks, loggers) is untouched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from trainer.callbacks.base import Callback

__all__ = ["Tuner", "LRFinder"]


# ------------------------------------------------------------------------------------ lr_find
class LRFinder:
    """What lr_find measured: ``results = {"lr": [...], "loss": [...]}`` (smoothed loss)."""

    def __init__(self, mode: str, min_lr: float, max_lr: float, num_training: int) -> None:
        self.mode = mode
        self.min_lr, self.max_lr, self.num_training = min_lr, max_lr, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate where the smoothed loss falls fastest from one step to the next (for the
        exponential sweep: the steepest descent against log lr), ignoring the first
        ``skip_begin`` and last ``skip_end`` points; None with fewer than 2 left."""
        lrs, losses = self.results["lr"], self.results["loss"]
        idx = [i for i in range(skip_begin, len(losses) - skip_end) if math.isfinite(losses[i])]
        if len(idx) < 2:
            self._optimal_idx = None
            return None
        loss_t = torch.tensor([losses[i] for i in idx], dtype=torch.float64)
        slope = torch.gradient(loss_t)[0]
        self._optimal_idx = idx[int(torch.argmin(slope))]
        return lrs[self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """Loss against learning rate (log x-axis when exponential); returns the Figure."""
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure()
            ax = fig.subplots()
        else:
            fig = ax.figure
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest and self.suggestion() is not None:
            i = self._optimal_idx
            ax.plot(self.results["lr"][i], self.results["loss"][i], markersize=10, marker="o",
                    color="red")
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return fig


class _LRSweep(Callback):
    """Sets the rising schedule at fit start; records (lr, smoothed loss) after each step."""

    def __init__(self, finder: LRFinder, early_stop_threshold: float | None,
                 beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self._avg = 0.0
        self._best = math.inf
        self._lr = 0.0
        self._step = -1

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        f = self.finder
        opt = trainer.optimizers[0]
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] = f.min_lr
        n = max(f.num_training - 1, 1)
        if f.mode == "exponential":
            def factor(i: int) -> float:
                return (f.max_lr / f.min_lr) ** (min(i, n) / n)
        else:
            def factor(i: int) -> float:
                return (f.min_lr + (f.max_lr - f.min_lr) * min(i, n) / n) / f.min_lr
        from trainer.trainer import LRSchedulerConfig

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        trainer.lr_scheduler_configs = [LRSchedulerConfig(sched, interval="step")]

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step:  # inside an accumulation window: no step yet
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        # the step's own loss: on_train_batch_end gets it divided by accumulate_grad_batches
        value = float(loss) * trainer.accumulate_grad_batches if loss is not None else math.nan
        n = len(self.finder.results["loss"])
        self._avg = self.beta * self._avg + (1 - self.beta) * value
        smoothed = self._avg / (1 - self.beta ** (n + 1))  # bias-corrected running mean
        self.finder.results["lr"].append(self._lr)
        self.finder.results["loss"].append(smoothed)
        if not math.isfinite(smoothed) or (
                self.early_stop_threshold is not None and n > 1
                and smoothed > self.early_stop_threshold * self._best):
            trainer.should_stop = True  # diverged: the rest of the sweep says nothing new
        self._best = min(self._best, smoothed)


# ------------------------------------------------------------------------------------ batch size
def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _batch_size_holders(module: Any, datamodule: Any, name: str) -> list[tuple[Any, bool]]:
    """Every place ``name`` lives, as (object, in its hparams?); as Lightning, all are set."""
    holders = []
    for owner in (module, datamodule):
        if owner is None:
            continue
        if name in getattr(owner, "__dict__", {}) or hasattr(type(owner), name):
            holders.append((owner, False))
        if name in getattr(owner, "hparams", {}):
            holders.append((owner, True))
    if not holders:
        raise ValueError(f"scale_batch_size: no {name!r} attribute on the module "
                         f"{'or datamodule ' if datamodule is not None else ''}(nor in hparams); "
                         f"set self.{name} in __init__ and read it in train_dataloader()")
    return holders


# ------------------------------------------------------------------------------------ Tuner
class Tuner:
    """``Tuner(trainer)``: ``lr_find`` and ``scale_batch_size`` for that Trainer's setup."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def _trial_trainer(self, callbacks: list[Any], **flags: Any) -> Any:
        from trainer.trainer import Trainer

        t = self.trainer
        return Trainer(strategy=t.strategy, accelerator=t.accelerator, devices=t.devices,
                       num_nodes=t.num_nodes, precision=t.precision,
                       accumulate_grad_batches=t.accumulate_grad_batches,
                       gradient_clip_val=t.gradient_clip_val,
                       gradient_clip_algorithm=t.gradient_clip_algorithm,
                       deterministic=t.deterministic, default_root_dir=t.default_root_dir,
                       logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, num_sanity_val_steps=0,
                       callbacks=callbacks, **flags)

    def lr_find(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                datamodule: Any = None, min_lr: float = 1e-8, max_lr: float = 1.0,
                num_training: int = 100, mode: str = "exponential",
                early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                attr_name: str = "") -> LRFinder:
        """Sweep the learning rate over ``num_training`` steps (fewer if the Trainer's
        max_epochs ends the fit first); see the module docstring."""
        if mode not in ("exponential", "linear"):
            raise ValueError(f"lr_find(mode=...): must be 'exponential' or 'linear' "
                             f"(got {mode!r})")
        if not 0 < min_lr < max_lr:
            raise ValueError(f"lr_find: needs 0 < min_lr < max_lr (got {min_lr}, {max_lr})")
        if not getattr(model, "automatic_optimization", True):
            raise ValueError("lr_find: needs automatic optimization (the finder sets the "
                             "optimizer's learning rate at every step)")
        attr = _lr_attr(model, attr_name) if update_attr else None
        finder = LRFinder(mode, min_lr, max_lr, num_training)
        sweep = _LRSweep(finder, early_stop_threshold)
        # Lightning runs the sweep in the Trainer's own fit loop: its epochs, training batches
        # and validation schedule hold, validation included (at most num_training batches)
        t = self.trainer
        trial = self._trial_trainer(
            [sweep], max_steps=num_training, on_nonfinite_loss="ignore",
            max_epochs=-1 if t.max_epochs == math.inf else t.max_epochs,
            limit_train_batches=t.limit_train_batches, limit_val_batches=num_training,
            val_check_interval=t.val_check_interval,
            check_val_every_n_epoch=t.check_val_every_n_epoch)
        with _weights_restored(model):
            trial.fit(model, train_dataloaders, val_dataloaders, datamodule)
        lr = finder.suggestion()
        if attr is not None and lr is not None:
            _set_attr(model, attr, lr)
        return finder

    def scale_batch_size(self, model: Any, train_dataloaders: Any = None,
                         val_dataloaders: Any = None, datamodule: Any = None,
                         mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                         max_trials: int = 25, batch_arg_name: str = "batch_size") -> int:
        """The largest batch size that trains without running out of memory."""
        if mode not in ("power", "binsearch"):
            raise ValueError(f"scale_batch_size(mode=...): must be 'power' or 'binsearch' "
                             f"(got {mode!r})")
        if train_dataloaders is not None or val_dataloaders is not None:
            raise ValueError("scale_batch_size: loaders passed in cannot be rebuilt at another "
                             "batch size; build them in train_dataloader() from "
                             f"self.{batch_arg_name} (module or datamodule)")
        holders = _batch_size_holders(model, datamodule, batch_arg_name)

        def set_size(n: int) -> None:
            for owner, in_hparams in holders:
                if in_hparams:
                    owner.hparams[batch_arg_name] = n
                else:
                    setattr(owner, batch_arg_name, n)

        def fits(n: int) -> bool:
            set_size(n)
            trial = self._trial_trainer([], max_steps=steps_per_trial,
                                        limit_val_batches=steps_per_trial)
            try:
                trial.fit(model, datamodule=datamodule)
            except BaseException as e:
                if not _is_oom(e):
                    raise
                trial.strategy.accelerator.empty_cache()
                return False
            return True

        limit = _dataset_len(model, datamodule)
        size, low, high = init_val, 0, None
        with _weights_restored(model):
            for _ in range(max_trials):
                if fits(size):
                    low = size
                    if high is None:
                        if limit is not None and size >= limit:
                            break  # the whole dataset in one batch: larger sizes change nothing
                        size = size * 2 if limit is None else min(size * 2, limit)
                        continue
                else:
                    high = size
                    if mode == "power":
                        break
                if high - low <= 1 or mode == "power":
                    break
                size = (low + high) // 2
        if low == 0:
            raise RuntimeError(f"scale_batch_size: even {batch_arg_name}={size} runs out of "
                               "memory; lower init_val")
        set_size(low)
        return low


def _dataset_len(model: Any, datamodule: Any) -> int | None:
    source = datamodule if datamodule is not None else model
    try:
        return len(source.train_dataloader().dataset)
    except (TypeError, AttributeError):
        return None


class _weights_restored:  # noqa: N801 (a context manager read as a phrase)
    """Within: anything may train ``model``; afterwards its weights and Trainer are as before."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.state = copy.deepcopy(self.model.state_dict())
        self.trainer = self.model._trainer

    def __exit__(self, *exc: Any) -> None:
        self.model.load_state_dict(self.state)
        self.model._trainer = self.trainer


def _lr_attr(model: Any, attr_name: str) -> tuple[Any, str, bool]:
    names = [attr_name] if attr_name else ["lr", "learning_rate"]
    for n in names:
        if n in getattr(model, "hparams", {}):
            return model, n, True
        if n in model.__dict__ or hasattr(type(model), n):
            return model, n, False
    raise ValueError(f"lr_find(update_attr=True): the module has no {' or '.join(names)} "
                     "attribute or hparam to set; add one (and read it in "
                     "configure_optimizers), or pass update_attr=False")


def _set_attr(model: Any, attr: tuple[Any, str, bool], value: float) -> None:
    owner, name, in_hparams = attr
    if in_hparams:
        owner.hparams[name] = value
    else:
        setattr(owner, name, value)
