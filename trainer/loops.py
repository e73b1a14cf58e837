"""The fit and evaluation loops: plain for-loops, the hot path kept bare.

Read ``FitLoop.run_epoch`` top to bottom: fetch a batch, move it, on_train_batch_start, one
optimization step (trainer.optimization: training_step, zero_grad, backward, clip, step),
on_train_batch_end, validation when due. Everything optional (hooks, logging, validation,
schedulers, accumulation) was decided once before the loop and is a local boolean or list
inside it, so a plain module with no callbacks runs almost exactly the loop one would write by
hand. The user's DataLoader is iterated as it is, to its StopIteration at a whole epoch's end,
so the random numbers are drawn exactly as ``for batch in loader:`` draws them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from trainer.checkpoint import restore_rng_states
from trainer.optimization import Optimization
from trainer.results import Results, logging_as

# reused wherever no context is needed (a nullcontext can be re-entered)
_NULL_CONTEXT = contextlib.nullcontext()


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


def batch_output(out: Any, accumulate: int, automatic: bool) -> dict[str, Any]:
    """What on_train_batch_end receives, as in Lightning: ``{'loss': ..., **rest of the dict}``
    (automatic optimization: the loss detached and divided by accumulate_grad_batches, ``{}``
    when training_step returned None)."""
    if out is None:
        return {}
    if type(out) is Tensor:  # the usual loss tensor (no ABC check per batch)
        extra = {"loss": out}
    else:
        extra = dict(out) if isinstance(out, Mapping) else {"loss": out}
    if automatic:
        loss = extra.get("loss")
        if loss is None:
            return {}
        loss = loss.detach()
        extra["loss"] = loss / accumulate if accumulate > 1 else loss
    return extra


def reads_outputs(hook: Callable[..., Any]) -> bool:
    """Whether a batch-end hook may read its ``outputs`` argument: every hook but those of
    ours marked ``ignores_outputs`` (the progress bar's), so a fit whose only batch-end hook
    is the bar builds no outputs dict per batch. A subclass's own override is not marked."""
    fn = getattr(hook, "func", hook)  # functools.partial(callback.hook, trainer, module)
    return not getattr(fn, "ignores_outputs", False)


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


def _train_batch_start(callers: list[Callable[..., Any]], batch: Any, batch_idx: int,
                       module_last: bool) -> Any:
    """on_train_batch_start of the callbacks, then the module's; what the module returned
    (a callback's return value means nothing, as in Lightning)."""
    response = None
    for f in callers:
        response = f(batch, batch_idx)
    return response if module_last else None


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
@dataclasses.dataclass
class FitContext:
    """What the fit loop takes from the Trainer, handed over once per fit."""

    module: Any
    optimization: Optimization
    results: Results  # what self.log collects in training hooks
    transfer: Callable[[Any, torch.device, int], Any] | None  # batch to device, with its hooks
    batch_start: list[Callable[..., Any]]  # on_train_batch_start: callbacks, then the module
    batch_end: list[Callable[..., Any]]
    overrides: set[str]  # module methods the user wrote
    call_hook: Callable[..., None]  # a hook on the callbacks, then the module
    validate: Callable[[list[Any]], None]  # one validation run inside fit
    val_enabled: bool
    log_train_step: Callable[[], None]  # on_step values to the loggers
    update_epoch_metrics: Callable[..., Any]
    check_watched_nonfinite: Callable[[], None]
    live: Callable[[Results | None], contextlib.AbstractContextManager]  # callback_metrics' source
    reload_loaders: Callable[[], tuple[Any, list[Any]]]  # reload_dataloaders_every_n_epochs
    restart_rng: dict[str, Any] | None = None  # RNG states to restore after a mid-epoch skip


def training_step_fn(step: Callable[..., Any], module: Any, precision: Any,
                     overrides: set[str]) -> Callable[[Any, int], Any]:
    """``step`` (training_step, through the strategy's wrapper), under autocast when the
    precision asks for it, then training_step_end when written; the bare step at full
    precision (no wrapper in the hot loop)."""
    step_end = module.training_step_end if "training_step_end" in overrides else None
    if precision.dtype is None and step_end is None:
        return step
    autocast = precision.context

    def run_step(batch: Any, batch_idx: int) -> Any:
        with autocast():
            out = step(batch, batch_idx)
        return out if step_end is None else step_end(out)
    return run_step


class FitLoop:
    """Epochs of training batches, with validation where the flags ask for it."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.ctx: FitContext | None = None  # set by the Trainer at the start of each fit
        self.batch_idx = 0
        self.batches_consumed = 0  # of the current epoch, for exact resume
        self.batches_total = 0  # training batches of all epochs (check_val_every_n_epoch=None)
        self.grads_pending = False  # inside an accumulation window: a backward not yet stepped
        self.epoch_rng: dict[str, Any] | None = None  # loader generators at this epoch's start
        self.epoch_end_reached = False
        self.restart: dict[str, Any] | None = None  # fit-loop state from a checkpoint
        self.total_batches: float = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "ctx": None}  # the context holds the Trainer's bound hooks

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "batches_consumed": self.batches_consumed,
            "batches_total": self.batches_total,
            "epoch_rng": self.epoch_rng,
            "epoch_end_reached": self.epoch_end_reached,
            "results": self.ctx.results.state_dict() if self.ctx is not None else {},
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
                dl, val_dls = self.ctx.reload_loaders()
                loaded_at = t.current_epoch
            self.run_epoch(dl, val_dls)
            t.current_epoch += 1
            if t.max_steps != -1 and t.global_step >= t.max_steps:
                break

    def _start_epoch_iterator(self, dl: Any) -> tuple[Any, int]:
        """iter(dl) as a hand loop does, or, when resuming mid-epoch, the same epoch order with
        the consumed batches skipped."""
        t, ctx = self.trainer, self.ctx
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
            restore_rng_states(ctx.restart_rng)
            ctx.results.load_state_dict(restart.get("results", {}))
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
        self.ctx.optimization.backward_in_window = True

    def run_epoch(self, dl: Any, val_dls: list[Any]) -> None:  # noqa: C901 (the loop, in full)
        t, ctx = self.trainer, self.ctx
        m, res, opt = ctx.module, ctx.results, ctx.optimization
        epoch = t.current_epoch
        restarting = self.restart is not None
        self.epoch_end_reached = False
        self.grads_pending = False

        m.train()
        res.reset_epoch()
        if not restarting:
            with logging_as(m, res, "train_epoch"):
                ctx.call_hook("on_train_epoch_start")
        iterator, batch_idx = self._start_epoch_iterator(dl)
        resumed_end = self.epoch_end_reached

        # ---- decided once per epoch
        n_batches = self.total_batches
        # a whole epoch runs the iterator to its StopIteration, as a for loop does: the
        # sampler draws from its generator once more there, and the next epoch's order
        # depends on it (a limited epoch stops after its batches, as Lightning does)
        exhaust = n_batches == sized_len(dl)
        device = t.strategy.root_device
        transfer = ctx.transfer
        automatic = m.automatic_optimization
        run_step = training_step_fn(t.strategy.training_step_fn(m), m, t.precision_plugin,
                                    ctx.overrides)
        opt.run_step = run_step
        keep_outputs = "training_epoch_end" in ctx.overrides
        outputs: list[Any] = []
        batch_start, batch_end = ctx.batch_start, ctx.batch_end
        build_outputs = any(reads_outputs(f) for f in batch_end)
        module_batch_start = "on_train_batch_start" in ctx.overrides
        accum = t.accumulate_grad_batches
        # step-interval schedulers step where Lightning steps them: at the end of each
        # accumulation window, counting the epoch's batches (batch_idx + 1) against their
        # frequency; the others right after the optimizer step, ReduceLROnPlateau ones after
        # the validation that may run on that batch (they watch its metrics)
        step_scheds = automatic and any(
            c.interval == "step" and not c.reduce_on_plateau for c in t.lr_scheduler_configs)
        plateau_scheds = automatic and any(
            c.interval == "step" and c.reduce_on_plateau for c in t.lr_scheduler_configs)
        first = last = True  # (manual optimization: every batch ends a "window")
        max_steps = t.max_steps if t.max_steps != -1 else math.inf
        log_every = t.log_every_n_steps if t.loggers and t.is_global_zero else 0
        no_sync = t.strategy.no_sync if t.strategy.world_size > 1 and accum > 1 else None
        val_every = self._val_check_batches(val_dls, n_batches)
        # check_val_every_n_epoch=None: val_every counts the batches of all epochs
        val_across = t.check_val_every_n_epoch is None
        # epoch schedulers step after the epoch's last batch, before on_train_batch_end
        # (Lightning's place); a resume after that batch finds them stepped already
        epoch_scheds_due = batch_idx < n_batches

        if batch_idx >= n_batches and not exhaust:  # resumed after the last batch
            iterator = ()
        with ctx.live(res), logging_as(m, res, "train_batch"):
            for batch in iterator:
                self.batch_idx = batch_idx
                if transfer is not None:
                    batch = transfer(batch, device, 0)
                res.batch = batch
                res.batch_size = None
                if batch_start and _train_batch_start(
                        batch_start, batch, batch_idx, module_batch_start) == -1:
                    break  # the module's on_train_batch_start returned -1: end the epoch

                if automatic:
                    if accum > 1:  # (else every batch is a whole window: first = last = True)
                        first = batch_idx % accum == 0
                        last = (batch_idx + 1) % accum == 0 or batch_idx + 1 == n_batches
                    if no_sync is None or last:
                        stepped = opt.training_batch(batch, batch_idx, first, last)
                    else:  # DDP skips the gradient all-reduce only when forward AND backward
                        with no_sync(m):  # of a micro-step run inside no_sync
                            stepped = opt.training_batch(batch, batch_idx, first, last)
                    out = opt.output
                    self.grads_pending = not last and opt.backward_in_window
                    if stepped:
                        t.global_step += 1
                        if log_every and t.global_step % log_every == 0:
                            ctx.log_train_step()
                    if last and step_scheds:
                        opt.step_schedulers("step", batch_idx + 1, plateau=False)
                else:
                    before = t.global_step
                    out = run_step(batch, batch_idx)
                    if log_every and t.global_step != before and t.global_step % log_every == 0:
                        ctx.log_train_step()
                if batch_idx + 1 == n_batches:
                    opt.step_schedulers("epoch", epoch + 1, plateau=False)
                    epoch_scheds_due = False

                if keep_outputs and out is not None:
                    outputs.append(detach_output(out))
                batch_idx += 1
                self.batches_consumed = batch_idx
                self.batches_total += 1
                if batch_end:
                    outs = batch_output(out, accum, automatic) if build_outputs else None
                    for f in batch_end:
                        f(outs, batch, batch_idx - 1)
                    outs = None
                # the step's output (the loss and its autograd graph) goes now, not once the
                # next step has run: held, the next step allocates all its tensors before the
                # graph's memory is freed, which costs time in malloc on a small model
                out = None
                if val_every and (
                        self.batches_total if val_across else batch_idx) % val_every == 0:
                    ctx.validate(val_dls)
                if last and plateau_scheds:
                    opt.step_schedulers("step", batch_idx, plateau=True)
                if (batch_idx >= n_batches and not exhaust) or t.global_step >= max_steps or (
                        t.should_stop and epoch + 1 >= t.min_epochs):
                    break

            else:  # the loader ran out (not a break): one of unknown length may end mid-window
                if automatic and self.grads_pending and opt.finish_window(batch_idx - 1):
                    t.global_step += 1
                    opt.step_schedulers("step", batch_idx, plateau=False)
                    opt.step_schedulers("step", batch_idx, plateau=True)
                if epoch_scheds_due:
                    opt.step_schedulers("epoch", epoch + 1, plateau=False)
        self.batches_consumed = batch_idx
        self.grads_pending = False  # the next epoch's first batch starts a new window
        ctx.check_watched_nonfinite()
        self._end_epoch(outputs if keep_outputs else None, resumed_end)

    def _end_epoch(self, outputs: list[Any] | None, resumed_end: bool) -> None:
        """Epoch-end hooks, epoch metrics to the loggers, ReduceLROnPlateau schedulers."""
        t, ctx = self.trainer, self.ctx
        m, res = ctx.module, ctx.results
        with logging_as(m, res, "train_epoch"):
            ctx.update_epoch_metrics(res, train=True, log=False)  # for the callbacks first
            if not resumed_end:  # (a resume at the epoch's end ran these before its checkpoint)
                self.epoch_end_reached = True
                ctx.call_hook("on_train_epoch_end", monitoring=False, module=False)
                if outputs is not None:
                    m.training_epoch_end(outputs)
                if "on_train_epoch_end" in ctx.overrides:
                    m.on_train_epoch_end()
                ctx.update_epoch_metrics(res, train=True, log=True)
                ctx.call_hook("on_train_epoch_end", monitoring=True, module=False)
        with warnings.catch_warnings():
            if resumed_end:  # resumed at the epoch's end: no optimizer.step() in this process yet
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before")
            ctx.optimization.step_schedulers("epoch", t.current_epoch + 1, plateau=True)
        res.reset_epoch()
        self.batches_consumed = 0
        self.epoch_end_reached = False
        for lg in t.loggers if t.is_global_zero else ():
            lg.save()

    def _val_check_batches(self, val_dls: list[Any], n_batches: float) -> int:
        t = self.trainer
        if not val_dls or not self.ctx.val_enabled:
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


@dataclasses.dataclass
class EvalContext:
    """What one evaluation pass (validate, test, predict) takes from the Trainer."""

    module: Any
    overrides: set[str]  # module methods the user wrote
    hook_callers: Callable[[str], list[Callable[..., Any]]]  # a hook's callbacks, then module
    transfer: Callable[[Any, torch.device, int], Any] | None  # batch to device, with its hooks
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]  # the precision's context
    live: Callable[[Results | None], contextlib.AbstractContextManager]  # callback_metrics
    log_step: Callable[[str, Results], None] | None  # on_step values to the loggers, or None


def run_evaluation(ctx: EvalContext, stage: str, dataloaders: list[Any], limits: list[float],
                   results: Results | None) -> list[list[Any]]:
    """One pass over each loader with ``{stage}_step``; returns the kept step outputs."""
    m = ctx.module
    prefix = {"validate": "validation", "test": "test", "predict": "predict"}[stage]
    short = {"validate": "val", "test": "test", "predict": "predict"}[stage]
    step_fn = getattr(m, f"{prefix}_step")
    step_end = getattr(m, f"{prefix}_step_end") if (
        f"{prefix}_step_end" in ctx.overrides) else None
    keep = stage == "predict" or f"{prefix}_epoch_end" in ctx.overrides
    batch_start = ctx.hook_callers(f"on_{prefix}_batch_start")
    batch_end = ctx.hook_callers(f"on_{prefix}_batch_end")
    device, transfer, autocast = ctx.device, ctx.transfer, ctx.autocast
    multi = len(dataloaders) > 1
    takes_idx = _takes_dataloader_idx(step_fn)
    log_step = ctx.log_step if results is not None else None
    all_outputs: list[list[Any]] = []
    batches = logging_as(m, results, f"{short}_batch") if results is not None else _NULL_CONTEXT
    with torch.no_grad(), ctx.live(results), batches:
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
                if log_step is not None:
                    log_step(stage, results)
                if batch_idx + 1 >= limit:
                    break
            all_outputs.append(outputs)
    if results is not None:
        results.dataloader_suffix = ""
    return all_outputs
