"""Tuner: Lightning's learning-rate finder and batch-size scaler.

``Tuner(trainer).lr_find(module, train_dataloaders=...)`` trains ``num_training`` steps while the
learning rate grows from ``min_lr`` to ``max_lr`` (exponentially or linearly), records the
smoothed loss at each, and suggests the rate where the loss falls fastest against the rate. It
is Lightning 2.6's finder point for point (the same rates, smoothing, early stop and suggestion,
quirks included and marked), so a Lightning user gets the same suggestion. The module's weights
are put back afterwards, and with ``update_attr`` its ``lr`` / ``learning_rate`` (attribute,
hparams, and the datamodule's, wherever it is found) is set to the suggestion.

``Tuner(trainer).scale_batch_size(module, mode="power" | "binsearch")`` tries a few training
steps at growing batch sizes (the module's or datamodule's ``batch_size``, which its
``train_dataloader()`` must read) until one runs out of memory or covers the whole dataset, and
keeps the largest that worked ("binsearch" then searches between the last good and the first
bad size, less a 5 % margin). It is Lightning 2.6's search step for step, quirks included (see
``_BatchSizeSearch``). Weights are put back here too.

Both run the trials in a separate, quiet Trainer with the given Trainer's device, strategy and
precision flags, so the given Trainer's own state (steps, callbacks, loggers) is untouched.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch

from trainer.callbacks.base import Callback

__all__ = ["Tuner", "LRFinder"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ lr_find
class LRFinder:
    """What lr_find measured: ``results = {"lr": [...], "loss": [...]}`` (smoothed loss)."""

    def __init__(self, mode: str, min_lr: float, max_lr: float, num_training: int) -> None:
        self.mode = mode
        self.min_lr, self.max_lr, self.num_training = min_lr, max_lr, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate where the smoothed loss falls fastest against the learning rate (the most
        negative d loss / d lr), ignoring the first ``skip_begin`` and last ``skip_end`` points
        and non-finite losses; None with fewer than 2 points left.

        Computed as Lightning 2.6 computes it (float32 tensors, ``torch.gradient`` with the
        rates as spacing, the slice ``[skip_begin:-skip_end]``), so the same sweep gives the
        same suggestion under both."""
        losses = torch.tensor(self.results["loss"][skip_begin:-skip_end])
        lrs = torch.tensor(self.results["lr"][skip_begin:-skip_end])
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:  # torch.gradient needs two points
            log.error("lr_find: too few finite losses to suggest a learning rate; raise "
                      "num_training or give the sweep more training batches")
            self._optimal_idx = None
            return None
        slope = torch.gradient(losses, spacing=[lrs])[0]
        kept = torch.arange(len(self.results["loss"]))[skip_begin:-skip_end][finite]
        self._optimal_idx = int(kept[int(torch.argmin(slope))])
        return self.results["lr"][self._optimal_idx]

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


class _SweepLR(torch.optim.lr_scheduler.LRScheduler):
    """Lightning 2.6's ``_ExponentialLR`` / ``_LinearLR``, so the sweep tries the same rates.

    Its quirk, kept: the first batch runs at ``base_lr`` (= min_lr) and the next jumps to
    ``r = 2 / num_iter`` (batch k >= 1 runs at ``r = (k + 1) / num_iter``), so the point
    ``r = 1 / num_iter`` is never tried and the last of ``num_iter`` batches runs at max_lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int,
                 exponential: bool) -> None:
        self.end_lr, self.num_iter, self.exponential = end_lr, num_iter, exponential
        self._lr: list[float] = []
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        r = (self.last_epoch + 1) / self.num_iter
        if self.last_epoch <= 0:
            val = list(self.base_lrs)
        elif self.exponential:
            val = [base * (self.end_lr / base) ** r for base in self.base_lrs]
        else:
            val = [base + r * (self.end_lr - base) for base in self.base_lrs]
        self._lr = val
        return val

    @property
    def lr(self) -> list[float]:
        return self._lr


class _LRSweep(Callback):
    """Sets the rising schedule at fit start; records (lr, smoothed loss) at each optimizer
    step, as Lightning 2.6's ``_LRCallback`` does (its quirks are copied and marked, so a
    Lightning user's sweep gives the same curve and the same suggestion here)."""

    def __init__(self, finder: LRFinder, early_stop_threshold: float | None,
                 beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self._avg = 0.0
        self._best = 0.0

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        f = self.finder
        if len(trainer.optimizers) != 1:
            raise ValueError(f"lr_find: configure_optimizers returned {len(trainer.optimizers)} "
                             "optimizers; the finder sweeps the rate of exactly one")
        opt = trainer.optimizers[0]
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] = f.min_lr
        from trainer.trainer import LRSchedulerConfig

        sched = _SweepLR(opt, f.max_lr, f.num_training, f.mode == "exponential")
        trainer.lr_scheduler_configs = [LRSchedulerConfig(sched, interval="step")]

    @staticmethod
    def _window_end(trainer: Any, batch_idx: int) -> bool:
        # Lightning's test: the epoch's batch index, not "did the optimizer step" (so the short
        # window that ends an epoch whose length is no multiple of accumulate_grad_batches is
        # not recorded there either)
        return (batch_idx + 1) % trainer.accumulate_grad_batches == 0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self._window_end(trainer, batch_idx):
            self.finder.results["lr"].append(trainer.lr_scheduler_configs[0].scheduler.lr[0])

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._window_end(trainer, batch_idx):
            return
        results = self.finder.results
        if not outputs:  # training_step returned None: a NaN point, the average untouched
            results["loss"].append(math.nan)
            return
        loss = outputs if isinstance(outputs, torch.Tensor) else outputs["loss"]
        # Lightning's quirks, copied: the loss is the one on_train_batch_end receives (divided
        # by accumulate_grad_batches), and the bias correction counts global_step, which the
        # step has already advanced: the first point is loss * (1 - beta) / (1 - beta ** 2)
        step = trainer.global_step
        self._avg = self.beta * self._avg + (1 - self.beta) * loss.item()
        smoothed = self._avg / (1 - self.beta ** (step + 1))
        # diverged: stop (a NaN compares False and does not stop the sweep, as in Lightning)
        if self.early_stop_threshold is not None and step > 1 and (
                smoothed > self.early_stop_threshold * self._best):
            trainer.should_stop = True
        if smoothed < self._best or step == 1:
            self._best = smoothed
        results["loss"].append(smoothed)


# ------------------------------------------------------------------------------------ batch size
def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _attr_holders(module: Any, datamodule: Any, name: str) -> list[tuple[Any, bool]]:
    """Every place ``name`` lives, as (object, in its hparams?): the module's attribute and
    hparams, then the datamodule's; as Lightning, a tuner sets all of them."""
    holders = []
    for owner in (module, datamodule):
        if owner is None:
            continue
        if name in getattr(owner, "__dict__", {}) or hasattr(type(owner), name):
            holders.append((owner, False))
        if name in getattr(owner, "hparams", {}):
            holders.append((owner, True))
    return holders


def _set_all(holders: list[tuple[Any, bool]], name: str, value: Any) -> None:
    for owner, in_hparams in holders:
        if in_hparams:
            owner.hparams[name] = value
        else:
            setattr(owner, name, value)


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
        attr = _lr_attr(model, datamodule, attr_name) if update_attr else None
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
            _set_all(*attr, lr)
        return finder

    def scale_batch_size(self, model: Any, train_dataloaders: Any = None,
                         val_dataloaders: Any = None, datamodule: Any = None,
                         mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                         max_trials: int = 25, batch_arg_name: str = "batch_size",
                         margin: float = 0.05, max_val: int = 8192) -> int:
        """The largest batch size that trains without running out of memory, searched as
        Lightning 2.6 searches it (see the module docstring and ``_BatchSizeSearch``)."""
        if mode not in ("power", "binsearch"):
            raise ValueError(f"scale_batch_size(mode=...): must be 'power' or 'binsearch' "
                             f"(got {mode!r})")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"scale_batch_size(margin=...): must be in [0, 1) (got {margin})")
        if train_dataloaders is not None or val_dataloaders is not None:
            raise ValueError("scale_batch_size: loaders passed in cannot be rebuilt at another "
                             "batch size; build them in train_dataloader() from "
                             f"self.{batch_arg_name} (module or datamodule)")
        holders = _attr_holders(model, datamodule, batch_arg_name)
        if not holders:
            raise ValueError(f"scale_batch_size: no {batch_arg_name!r} attribute on the module "
                             f"{'or datamodule ' if datamodule is not None else ''}(nor in "
                             f"hparams); set self.{batch_arg_name} in __init__ and read it in "
                             "train_dataloader()")
        t = self.trainer

        def trial() -> None:  # Lightning's trial: steps_per_trial steps in the fit loop
            self._trial_trainer(
                [], max_steps=steps_per_trial, limit_val_batches=steps_per_trial,
                max_epochs=-1 if t.max_epochs == math.inf else t.max_epochs,
            ).fit(model, datamodule=datamodule)

        search = _BatchSizeSearch(holders, batch_arg_name, trial,
                                  _dataset_len(model, datamodule), t.strategy.accelerator)
        with _weights_restored(model):
            if mode == "power":
                return search.power(init_val, max_trials, max_val)
            return search.binsearch(init_val, max_trials, max_val, margin)


class _BatchSizeSearch:
    """Lightning 2.6's batch-size search (``tuner/batch_size_scaling.py``), step for step, so
    a Lightning user gets the same size; its quirks are copied, not fixed:

    - a size at or above the dataset's length is never changed again, so the search stops
      there (and may return a size above the length: 32 -> 64 on 40 samples returns 64; an
      out-of-memory error at such a size returns it too);
    - power: each success doubles (capped at 8192); an out-of-memory error halves the size
      and ends the search if an earlier size worked (else the search goes on from the half);
    - binsearch: doubles until an error, then bisects between the last success (from 1) and
      the first failure; the result is lowered by ``margin`` (5 %) at the end;
    - a search stops before trying a size >= max_val, and after max_trials trials (power) or
      max_trials successes (binsearch), returning the last size that worked.
    """

    def __init__(self, holders: list[tuple[Any, bool]], name: str, trial: Any,
                 dataset_len: int | None, accelerator: Any) -> None:
        self.holders, self.name, self.trial = holders, name, trial
        self.dataset_len, self.accelerator = dataset_len, accelerator

    @property
    def size(self) -> int:
        owner, in_hparams = self.holders[-1]  # Lightning reads its last holder
        return owner.hparams[self.name] if in_hparams else getattr(owner, self.name)

    def adjust(self, factor: float = 1.0, value: int | None = None, max_val: int = 8192
               ) -> tuple[int, bool]:
        """Lightning's ``_adjust_batch_size``: the new size and whether it changed."""
        old = self.size
        if self.dataset_len is not None and old >= self.dataset_len:
            return old, False
        new = min(value if value is not None else int(old * factor), max_val)
        if new < 1:  # (Lightning goes on to a DataLoader error about batch_size=0)
            raise RuntimeError(f"scale_batch_size: even {self.name}={old} runs out of memory; "
                               "lower init_val")
        _set_all(self.holders, self.name, new)
        return new, new != old

    def fits(self) -> bool:
        try:
            self.trial()
        except BaseException as e:
            if not _is_oom(e):
                raise
            self.accelerator.empty_cache()
            return False
        return True

    def power(self, init_val: int, max_trials: int, max_val: int) -> int:
        size, _ = self.adjust(value=init_val)
        any_success = False
        for i in range(max_trials):
            if size >= max_val:
                break
            if self.fits():
                last_ok = size
                if i + 1 >= max_trials:
                    size = last_ok
                    break
                size, changed = self.adjust(factor=2.0)
                if not changed:
                    break
                any_success = True
            else:
                size, _ = self.adjust(factor=0.5)
                if any_success:
                    break
        return size

    def binsearch(self, init_val: int, max_trials: int, max_val: int, margin: float) -> int:
        size, _ = self.adjust(value=init_val)
        low, high, count = 1, None, 0
        while size < max_val:
            if self.fits():
                last_ok = size
                count += 1
                if count >= max_trials:
                    size = last_ok
                    break
                low = size
                if high:
                    if high - low <= 1:
                        break
                    size, changed = self.adjust(value=(high + low) // 2, max_val=max_val)
                else:
                    size, changed = self.adjust(factor=2.0, max_val=max_val)
                if not changed:
                    break
            else:
                high = size
                size, _ = self.adjust(value=(high + low) // 2)
                if high - low <= 1:
                    break
        if margin > 0:
            reduced = max(1, int(size * (1 - margin)))
            if reduced != size:
                size = reduced
                _set_all(self.holders, self.name, size)
        return size


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


def _lr_attr(model: Any, datamodule: Any, attr_name: str
             ) -> tuple[list[tuple[Any, bool]], str]:
    """Where the suggestion goes: ``attr_name``, else the first of lr / learning_rate found
    (Lightning's order), with every holder of that name."""
    names = [attr_name] if attr_name else ["lr", "learning_rate"]
    for n in names:
        holders = _attr_holders(model, datamodule, n)
        if holders:
            return holders, n
    raise ValueError(f"lr_find(update_attr=True): the module has no {' or '.join(names)} "
                     "attribute or hparam to set; add one (and read it in "
                     "configure_optimizers), or pass update_attr=False")
