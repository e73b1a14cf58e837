"""The fit and evaluation loops: plain for-loops, the hot path kept bare.

Read ``FitLoop.run_epoch`` top to bottom: zero_grad, training_step, backward, (clip), step.
Everything optional (hooks, logging, validation, schedulers, accumulation) was decided once
before the loop and is a local boolean or list inside it, so a plain module with no callbacks
runs almost exactly the loop one would write by hand. The user's DataLoader is iterated as it
is, so the random numbers are drawn exactly as a hand-written loop draws them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from trainer.checkpoint import restore_rng_states

# reused for every micro-step that needs no DDP no_sync (a nullcontext can be re-entered)
_NO_SYNC = contextlib.nullcontext()


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf."""


# ------------------------------------------------------------------------------------ batches
def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (in tuples, lists, dicts, dataclasses) to ``device``; non_blocking when pinned."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=batch.is_pinned()) if batch.device != device else (
            batch)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(b, device) for b in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{
            f.name: move_to_device(getattr(batch, f.name), device)
            for f in dataclasses.fields(batch) if f.init})
    return batch


def detach_output(out: Any) -> Any:
    """A step output kept for *_epoch_end, without its autograd graph."""
    if isinstance(out, Tensor):
        return out.detach()
    if isinstance(out, Mapping):
        return {k: detach_output(v) for k, v in out.items()}
    if isinstance(out, list | tuple):
        return type(out)(detach_output(v) for v in out)
    return out


def loader_generators(dl: Any) -> list[torch.Generator]:
    """The distinct torch.Generators a loader draws its order from (loader, samplers)."""
    gens: list[torch.Generator] = []
    for owner in (dl, getattr(dl, "sampler", None),
                  getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def _reuses_workers(dl: Any) -> bool:
    return isinstance(dl, DataLoader) and dl.persistent_workers and dl.num_workers > 0


def _iter_as_reused(dl: DataLoader) -> Any:
    """iter(dl) drawing the sample order as a persistent-worker loader does from its second
    epoch on. That loader's first iter() draws a seed for its workers from the loader's
    generator and later ones reuse the workers and draw nothing; a resumed run starts new
    workers after the first epoch, and that extra draw would shift the order it resumes in.
    Their seed comes from a generator of their own instead (where the workers are reused,
    nothing is drawn from it). Random operations inside the workers are not resumed exactly:
    their state lives in the old worker processes."""
    own = dl.generator
    dl.generator = torch.Generator().manual_seed(0)
    try:
        return iter(dl)
    finally:
        dl.generator = own


def skip_batches(iterator: Any, dl: Any, n: int) -> None:
    """Advance ``iterator`` by ``n`` batches: at index level (no data loaded) where possible."""
    if n <= 0:
        return
    cheap = (isinstance(dl, DataLoader) and dl.num_workers == 0
             and not isinstance(dl.dataset, IterableDataset) and hasattr(iterator, "_next_index"))
    for _ in range(n):
        if cheap:
            iterator._next_index()
        else:
            next(iterator)


def sized_len(dl: Any) -> float:
    try:
        return len(dl)
    except TypeError:
        return math.inf


def limit_batches(n: float, limit: int | float) -> float:
    """Apply a limit_*_batches flag (int count or float fraction) to a loader length."""
    if isinstance(limit, float):
        if math.isinf(n):
            return n if limit == 1.0 else 0
        return int(n * limit) if limit < 1.0 else n
    return min(n, limit)


# ------------------------------------------------------------------------------------ fit
class FitLoop:
    """Epochs of training batches, with validation where the flags ask for it."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.batch_idx = 0
        self.batches_consumed = 0  # of the current epoch, for exact resume
        self.batches_total = 0  # training batches of all epochs (check_val_every_n_epoch=None)
        self.grads_pending = False  # inside an accumulation window: a backward not yet stepped
        self.epoch_rng: dict[str, Any] | None = None  # loader generators at this epoch's start
        self.epoch_end_reached = False
        self.restart: dict[str, Any] | None = None  # fit-loop state from a checkpoint
        self.total_batches: float = 0

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "batches_consumed": self.batches_consumed,
            "batches_total": self.batches_total,
            "epoch_rng": self.epoch_rng,
            "epoch_end_reached": self.epoch_end_reached,
            "results": self.trainer._train_results.state_dict(),
            "pending_grads": self._pending_grads(),
        }

    def _pending_grads(self) -> list[list[Tensor | None]] | None:
        """Per rank, the gradients summed so far in an unfinished accumulation window, so that
        a resume from a checkpoint taken inside the window takes the same optimizer step. Under
        DDP each rank holds its own partial sums (they are all-reduced only by the window's last
        backward), so they are gathered: every rank builds the checkpoint (save_checkpoint)."""
        t = self.trainer
        if not self.grads_pending:
            return None
        grads = [None if p.grad is None else p.grad.detach().cpu().clone()
                 for p in t.lightning_module.parameters()]
        return t.strategy.all_gather_object(grads)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restart = state

    # -------------------------------------------------------------- epochs
    def run(self, dl: Any, val_dls: list[Any]) -> None:
        t = self.trainer
        reload_every, loaded_at = t.reload_dataloaders_every_n_epochs, t.current_epoch
        while True:
            if t.max_steps != -1 and t.global_step >= t.max_steps:
                break
            if t.current_epoch >= t.max_epochs:
                break
            if t.should_stop and t.current_epoch >= t.min_epochs:
                break
            t.should_stop = False if t.current_epoch < t.min_epochs else t.should_stop
            if reload_every and t.current_epoch - loaded_at >= reload_every:
                dl, val_dls = t._reload_fit_loaders()
                loaded_at = t.current_epoch
            self.run_epoch(dl, val_dls)
            t.current_epoch += 1
            if t.max_steps != -1 and t.global_step >= t.max_steps:
                break

    def _start_epoch_iterator(self, dl: Any) -> tuple[Any, int]:
        """iter(dl) as a hand loop does, or, when resuming mid-epoch, the same epoch order with
        the consumed batches skipped."""
        t = self.trainer
        restart, self.restart = self.restart, None
        gens = loader_generators(dl)
        if restart is not None and restart["epoch_rng"] is not None:
            for g, s in zip(gens, restart["epoch_rng"]["gens"]):
                g.set_state(s)
            torch.set_rng_state(restart["epoch_rng"]["torch"])
        self.epoch_rng = {"gens": [g.get_state() for g in gens],
                          "torch": torch.get_rng_state()}
        t.strategy.set_epoch(dl, t.current_epoch)
        iterator = _iter_as_reused(dl) if _reuses_workers(dl) and t.current_epoch > 0 else iter(dl)
        start = 0
        if restart is not None:
            start = restart["batches_consumed"]
            skip_batches(iterator, dl, start)
            restore_rng_states(t._restart_rng)
            t._train_results.load_state_dict(restart.get("results", {}))
            self.epoch_end_reached = restart.get("epoch_end_reached", False)
            self._restore_pending_grads(restart.get("pending_grads"))
        return iterator, start

    def _restore_pending_grads(self, per_rank: list[list[Tensor | None]] | None) -> None:
        t = self.trainer
        if per_rank is None:
            return
        if len(per_rank) != t.strategy.world_size:
            warnings.warn(
                f"the checkpoint was taken inside a gradient accumulation window by "
                f"{len(per_rank)} process(es) and is resumed by {t.strategy.world_size}: the "
                "gradients summed so far are dropped, so the first optimizer step after the "
                "resume sums fewer batches than the uninterrupted run's", stacklevel=2)
            return
        for p, g in zip(t.lightning_module.parameters(), per_rank[t.strategy.global_rank]):
            p.grad = None if g is None else g.to(p.device)
        self.grads_pending = True

    def run_epoch(self, dl: Any, val_dls: list[Any]) -> None:  # noqa: C901 (the loop, in full)
        t = self.trainer
        m = t.lightning_module
        hooks = t._hooks
        res = t._train_results
        epoch = t.current_epoch
        self.epoch_end_reached = False
        self.grads_pending = False
        restarting = self.restart is not None

        m.train()
        res.reset_epoch()
        m._results = res
        res.fx = "train_epoch"
        if not restarting:
            t._call_hook("on_train_epoch_start")
        iterator, batch_idx = self._start_epoch_iterator(dl)
        resumed_end = self.epoch_end_reached
        t._live_results = res
        res.fx = "train_batch"

        # ---- decided once per epoch
        n_batches = self.total_batches
        device = t.strategy.root_device
        transfer = t._transfer_fn
        automatic = m.automatic_optimization
        training_step = m.training_step
        step_end = m.training_step_end if "training_step_end" in t._module_overrides else None
        keep_outputs = "training_epoch_end" in t._module_overrides
        outputs: list[Any] = []
        batch_start = hooks["on_train_batch_start"]
        batch_end = hooks["on_train_batch_end"]
        before_zero_grad = hooks["on_before_zero_grad"]
        before_backward = hooks["on_before_backward"]
        after_backward = hooks["on_after_backward"]
        before_opt_step = hooks["on_before_optimizer_step"]
        if t.precision_plugin.dtype is None:
            run_step = training_step  # no wrapper in the hot loop at full precision
        else:
            autocast = t.precision_plugin.autocast

            def run_step(batch: Any, batch_idx: int) -> Any:
                with autocast():
                    return training_step(batch, batch_idx)

        scaler = t.precision_plugin.scaler
        opt = t.optimizers[0] if automatic and t.optimizers else None
        accum = t.accumulate_grad_batches
        clip_val = t.gradient_clip_val
        step_scheds = [c for c in t.lr_scheduler_configs if c.interval == "step"]
        max_steps = t.max_steps if t.max_steps != -1 else math.inf
        nonfinite = t.on_nonfinite_loss
        # 'raise' checks each step on CPU (no sync there) and, on an accelerator, reads a device
        # accumulator at log points and epoch end; 'skip' must check each step (a sync on GPU)
        check_now = nonfinite == "skip" or (nonfinite == "raise" and device.type == "cpu")
        check_later = nonfinite == "raise" and not check_now
        log_every = t.log_every_n_steps if t.loggers and t.is_global_zero else 0
        no_sync = t.strategy.no_sync if t.strategy.world_size > 1 and accum > 1 else None
        val_every = self._val_check_batches(val_dls, n_batches)
        # check_val_every_n_epoch=None: val_every counts the batches of all epochs
        val_across = t.check_val_every_n_epoch is None
        pending = self.grads_pending  # a backward has happened since the last optimizer step

        if batch_idx >= n_batches:  # resumed after the last batch: nothing left to fetch
            iterator = ()
        for batch in iterator:
            self.batch_idx = batch_idx
            if transfer is not None:
                batch = transfer(batch, device, 0)
            res.batch = batch
            res.batch_size = None
            if batch_start:
                stop = False
                for f in batch_start:
                    if f(batch, batch_idx) == -1:
                        stop = True
                if stop:  # the module's on_train_batch_start returned -1: end the epoch
                    break

            if automatic:
                first = accum == 1 or batch_idx % accum == 0
                last = accum == 1 or (batch_idx + 1) % accum == 0 or batch_idx + 1 == n_batches
                if first:
                    for f in before_zero_grad:
                        f(opt)
                    opt.zero_grad()
                # DDP skips the gradient all-reduce only when forward AND backward of a
                # micro-step run inside no_sync, so it wraps both.
                with no_sync(m) if no_sync is not None and not last else _NO_SYNC:
                    out = run_step(batch, batch_idx)
                    if step_end is not None:
                        out = step_end(out)
                    loss = out if type(out) is Tensor else t._loss_of(out)
                    if loss is not None and check_now and not math.isfinite(loss.item()):
                        loss = t._nonfinite(loss, epoch, batch_idx)
                    if loss is not None:
                        if check_later:
                            t._watch_nonfinite(loss, batch_idx)
                        if accum > 1:
                            loss = loss / accum
                        for f in before_backward:
                            f(loss)
                        if scaler is None:
                            loss.backward()
                        else:
                            scaler.scale(loss).backward()
                        for f in after_backward:
                            f()
                        pending = True
                if last and pending:
                    for f in before_opt_step:
                        f(opt)
                    if clip_val is not None:
                        t._clip_gradients(opt, clip_val, t.gradient_clip_algorithm)
                    if scaler is None:
                        opt.step()
                    else:
                        scaler.step(opt)
                        scaler.update()
                    pending = False
                    t.global_step += 1
                    if step_scheds:
                        t._step_schedulers(step_scheds, t.global_step)
                    if log_every and t.global_step % log_every == 0:
                        t._log_train_step()
            else:
                before = t.global_step
                out = run_step(batch, batch_idx)
                if step_end is not None:
                    out = step_end(out)
                if log_every and t.global_step != before and t.global_step % log_every == 0:
                    t._log_train_step()

            if keep_outputs and out is not None:
                outputs.append(detach_output(out))
            batch_idx += 1
            self.batches_consumed = batch_idx
            self.batches_total += 1
            self.grads_pending = pending  # for a checkpoint taken by the hooks below
            if batch_end:
                for f in batch_end:
                    f(out, batch, batch_idx - 1)
            if val_every and (self.batches_total if val_across else batch_idx) % val_every == 0:
                t._run_validation_in_fit(val_dls)
                res.fx = "train_batch"
                m._results = res
                t._live_results = res
            if batch_idx >= n_batches or t.global_step >= max_steps or (
                    t.should_stop and epoch + 1 >= t.min_epochs):
                break

        else:  # the loader ran out (not a break): one of unknown length may end mid-window
            if pending:
                t._clip_and_step_tail(opt)
        self.batches_consumed = batch_idx
        self.grads_pending = False  # the next epoch's first batch starts a new window
        t._live_results = None
        t._check_watched_nonfinite()

        # ---- epoch end: hooks, epoch metrics, loggers, epoch schedulers
        m._results = res
        res.fx = "train_epoch"
        t._update_epoch_metrics(res, train=True, log=False)  # for the callbacks that run first
        if not resumed_end:
            self.epoch_end_reached = True
            t._call_hook("on_train_epoch_end", monitoring=False, module=False)
            if keep_outputs:
                m.training_epoch_end(outputs)
            if "on_train_epoch_end" in t._module_overrides:
                m.on_train_epoch_end()
            t._update_epoch_metrics(res, train=True, log=True)
            t._call_hook("on_train_epoch_end", monitoring=True, module=False)
        m._results = None
        with warnings.catch_warnings():
            if resumed_end:  # resumed at the epoch's end: no optimizer.step() in this process yet
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before")
            t._step_schedulers([c for c in t.lr_scheduler_configs if c.interval == "epoch"],
                               epoch + 1)
        res.reset_epoch()
        self.batches_consumed = 0
        self.epoch_end_reached = False
        for lg in t.loggers if t.is_global_zero else ():
            lg.save()

    def _val_check_batches(self, val_dls: list[Any], n_batches: float) -> int:
        t = self.trainer
        if not val_dls or not t._val_enabled:
            return 0
        v = t.val_check_interval
        if t.check_val_every_n_epoch is None:
            return v  # an int (checked by the Trainer), counted across epochs
        if (t.current_epoch + 1) % t.check_val_every_n_epoch != 0:
            return 0
        if isinstance(v, float):
            if math.isinf(n_batches):
                if v != 1.0:
                    raise ValueError("Trainer(val_check_interval=float): needs a loader with a "
                                     "length; use an int number of batches")
                return 0
            return max(1, int(n_batches * v))
        if v > n_batches:
            raise ValueError(
                f"Trainer(val_check_interval={v}): more than the {int(n_batches)} training "
                "batches of an epoch, so validation would never run; use fewer, or "
                "check_val_every_n_epoch=None to count batches across epochs")
        return v


# ------------------------------------------------------------------------------------ eval
def _takes_dataloader_idx(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3


def run_evaluation(trainer: Any, stage: str, dataloaders: list[Any], limits: list[float],
                   results: Any, sanity: bool = False) -> list[list[Any]]:
    """One pass over each loader with ``{stage}_step``; returns the kept step outputs."""
    t = trainer
    m = t.lightning_module
    prefix = {"validate": "validation", "test": "test", "predict": "predict"}[stage]
    short = {"validate": "val", "test": "test", "predict": "predict"}[stage]
    step_fn = getattr(m, f"{prefix}_step")
    step_end = getattr(m, f"{prefix}_step_end") if (
        f"{prefix}_step_end" in t._module_overrides) else None
    keep = stage == "predict" or f"{prefix}_epoch_end" in t._module_overrides
    batch_start = t._hook_callers(f"on_{prefix}_batch_start")
    batch_end = t._hook_callers(f"on_{prefix}_batch_end")
    device = t.strategy.root_device
    transfer = t._transfer_fn
    autocast = t.precision_plugin.context
    multi = len(dataloaders) > 1
    takes_idx = _takes_dataloader_idx(step_fn)
    # on_step values go to the loggers after each batch, as Lightning does (not in the sanity
    # check, never for predict), at the stage's own batch count
    log_steps = (results is not None and not (sanity or t.sanity_checking) and stage != "predict"
                 and t.is_global_zero and bool(t.loggers))
    all_outputs: list[list[Any]] = []
    was_training = m.training
    m.eval()
    if results is not None:
        results.fx = f"{short}_batch"
        m._results = results
    else:
        m._results = None
    t._live_results = results
    with torch.no_grad():
        for dl_idx, dl in enumerate(dataloaders):
            outputs: list[Any] = []
            if results is not None:
                results.dataloader_suffix = f"/dataloader_idx_{dl_idx}" if multi else ""
            extra = (dl_idx,) if multi and takes_idx else ()
            limit = limits[dl_idx]
            if limit <= 0:
                all_outputs.append(outputs)
                continue
            for batch_idx, batch in enumerate(dl):
                if transfer is not None:
                    batch = transfer(batch, device, dl_idx)
                if results is not None:
                    results.batch = batch
                    results.batch_size = None
                for f in batch_start:
                    f(batch, batch_idx, dl_idx)
                with autocast():
                    out = step_fn(batch, batch_idx, *extra)
                if step_end is not None:
                    out = step_end(out)
                if keep and out is not None:
                    outputs.append(out if stage == "predict" else detach_output(out))
                for f in batch_end:
                    f(out, batch, batch_idx, dl_idx)
                if log_steps:
                    t._log_eval_step(stage, results)
                if batch_idx + 1 >= limit:
                    break
            all_outputs.append(outputs)
    if results is not None:
        results.dataloader_suffix = ""
        results.fx = f"{short}_epoch"
    t._live_results = None
    if was_training:
        m.train()
    return all_outputs
