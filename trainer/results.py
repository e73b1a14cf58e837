"""What ``self.log`` collected during one stage (train, validate or test).

Values stay tensors on their device. An on_step value is kept as the last tensor logged; an
on_epoch 'mean' keeps the step tensors in a short list with their batch sizes (a list append,
no tensor op per step) and folds every FOLD_EVERY of them into a running weighted sum with one
stack; 'max'/'min'/'sum' keep a running tensor. The hot loop never waits on the device. Floats are
made only when the progress bar refreshes, a logger is called or an epoch ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

FOLD_EVERY = 256  # step values of a 'mean' entry held before they are summed into one tensor

_REDUCE_ALIASES = {
    "mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
    torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
}

# What logging means in each hook: (default on_step, default on_epoch, on_step allowed,
# on_epoch allowed). A hook not listed here cannot log.
_STEP_HOOK = (True, False, True, True)
_EVAL_STEP_HOOK = (False, True, True, True)
_EPOCH_HOOK = (False, True, False, True)
FX_DEFAULTS: dict[str, tuple[bool, bool, bool, bool]] = {
    "train_batch": _STEP_HOOK,  # training_step(_end), on_train_batch_*, backward/optimizer hooks
    "train_epoch": _EPOCH_HOOK,  # on_train_start, on_train_epoch_*, training_epoch_end
    "val_batch": _EVAL_STEP_HOOK,
    "val_epoch": _EPOCH_HOOK,
    "test_batch": _EVAL_STEP_HOOK,
    "test_epoch": _EPOCH_HOOK,
}


def _is_metric(value: Any) -> bool:
    return hasattr(value, "compute") and hasattr(value, "reset") and hasattr(
        value, "_forward_cache"
    )


class LogEntry:
    """One logged name: its options, its last step value and its epoch accumulator."""

    __slots__ = (
        "name", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist",
        "step_key", "epoch_key", "step_value", "acc", "weight", "metric", "pending",
        "pending_w",
    )

    def __init__(self, name: str, on_step: bool, on_epoch: bool, prog_bar: bool, logger: bool,
                 reduce: str, sync_dist: bool, metric: Any = None) -> None:
        self.name = name
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.prog_bar = prog_bar
        self.logger = logger
        self.reduce = reduce
        self.sync_dist = sync_dist
        both = on_step and on_epoch
        self.step_key = f"{name}_step" if both else name
        self.epoch_key = f"{name}_epoch" if both else name
        self.step_value: Tensor | None = None
        self.acc: Tensor | None = None
        self.weight = 0
        self.pending: list[Tensor] = []  # 'mean': step values not yet summed into acc
        self.pending_w: list[int] = []  # and their batch sizes
        self.metric = metric

    def fold(self) -> None:
        """Sum the pending step values, weighted by their batch sizes, into ``acc``."""
        if not self.pending:
            return
        vals = torch.stack(self.pending)
        vals = vals.double() if vals.dtype == torch.float64 else vals.float()
        w = self.pending_w
        if w.count(w[0]) == len(w):
            total = vals.sum() * w[0]
        else:
            total = vals @ torch.tensor(w, dtype=vals.dtype).to(vals.device, non_blocking=True)
        self.acc = total if self.acc is None else self.acc + total
        self.weight += sum(w)
        self.pending, self.pending_w = [], []

    def options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "name", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist")}


class Results:
    """The entries of one stage; ``log`` is the hot path."""

    def __init__(self, stage: str, strategy: Any = None) -> None:
        self.stage = stage
        self.strategy = strategy
        self.entries: dict[str, LogEntry] = {}
        self.fx = ""  # 'train_batch', 'val_epoch', ... set by the loop; '' means no logging
        self.batch_size: int | None = None  # of the current batch, found lazily
        self.batch: Any = None
        self.dataloader_suffix = ""  # '/dataloader_idx_1' when several loaders are evaluated

    # ---------------------------------------------------------------- the hot path
    def log(self, name: str, value: Any, on_step: bool | None, on_epoch: bool | None,
            prog_bar: bool, logger: bool, reduce_fx: Any, sync_dist: bool,
            batch_size: int | None) -> None:
        # the options were checked once, when the name was first logged (_new_entry); a call
        # costs a dict lookup, the value's checks, one detach and two list appends
        entry = self.entries.get(name + self.dataloader_suffix)
        if entry is None:
            entry = self._new_entry(name + self.dataloader_suffix, value, on_step, on_epoch,
                                    prog_bar, logger, reduce_fx, sync_dist)
        if type(value) is Tensor and entry.metric is None:
            if value.numel() != 1:
                raise ValueError(
                    f"self.log({name!r}, value): value must be a scalar tensor "
                    f"(got shape {tuple(value.shape)}); reduce it first, e.g. value.mean()"
                )
            value = value.detach()
        elif entry.metric is not None:
            if value is not entry.metric:
                raise ValueError(f"self.log({name!r}): logged a Metric before, now {value!r}")
            return  # a Metric keeps its own state; read at step / epoch end
        else:
            value = self._as_tensor(name, value)
        if entry.on_step:
            if entry.sync_dist:
                value = self.strategy.reduce(value, entry.reduce)
            entry.step_value = value
        if entry.on_epoch:
            red = entry.reduce
            if red == "mean":
                if batch_size is None:
                    batch_size = self.batch_size
                    if batch_size is None:
                        batch_size = self.batch_size = extract_batch_size(self.batch)
                pending = entry.pending
                pending.append(value)
                entry.pending_w.append(batch_size)
                if len(pending) == FOLD_EVERY:
                    entry.fold()
            elif entry.acc is None:
                entry.acc = value.clone() if value.is_floating_point() else value.float()
            elif red == "sum":
                entry.acc.add_(value)
            elif red == "max":
                torch.maximum(entry.acc, value, out=entry.acc)
            else:
                torch.minimum(entry.acc, value, out=entry.acc)

    # ---------------------------------------------------------------- setup of a name
    def _new_entry(self, key, value, on_step, on_epoch, prog_bar, logger, reduce_fx, sync_dist):
        fx = self.fx
        if fx not in FX_DEFAULTS:
            where = fx or "outside a step or epoch hook"
            raise RuntimeError(
                f"self.log({key!r}): logging is not supported in {where}; log from "
                "training_step / validation_step / test_step or their batch and epoch hooks "
                "(predict_step and configure_optimizers cannot log)"
            )
        d_step, d_epoch, step_ok, epoch_ok = FX_DEFAULTS[fx]
        on_step = d_step if on_step is None else bool(on_step)
        on_epoch = d_epoch if on_epoch is None else bool(on_epoch)
        if on_step and not step_ok:
            raise ValueError(f"self.log({key!r}, on_step=True): not allowed in an epoch-level "
                             "hook; use on_step=False")
        if not on_step and not on_epoch:
            raise ValueError(f"self.log({key!r}): on_step and on_epoch are both False, so the "
                             "value would go nowhere; set one of them")
        red = _REDUCE_ALIASES.get(reduce_fx)
        if red is None:
            raise ValueError(f"self.log({key!r}, reduce_fx={reduce_fx!r}): must be one of "
                             "'mean', 'sum', 'max', 'min'")
        metric = value if _is_metric(value) else None
        entry = LogEntry(key, on_step, on_epoch, bool(prog_bar), bool(logger), red,
                         bool(sync_dist) and metric is None, metric)
        self.entries[key] = entry
        return entry

    @staticmethod
    def _as_tensor(name: str, value: Any) -> Tensor:
        if isinstance(value, bool) or not isinstance(value, int | float):
            if _is_metric(value):
                raise ValueError(f"self.log({name!r}): a Metric cannot replace a logged value")
            raise TypeError(
                f"self.log({name!r}, value): value must be a number, a scalar tensor or a "
                f"Metric (got {type(value).__name__}); use self.log_dict for dicts"
            )
        return torch.tensor(float(value))

    # ---------------------------------------------------------------- readers
    def step_values(self, which: str = "all") -> dict[str, Tensor]:
        """Latest on_step values ('all', 'logger' or 'prog_bar' entries)."""
        out = {}
        for e in self.entries.values():
            if not e.on_step or (which == "logger" and not e.logger) or (
                    which == "prog_bar" and not e.prog_bar):
                continue
            if e.metric is not None:
                v = e.metric._forward_cache
                if v is None:
                    continue
                out[e.step_key] = v.detach() if isinstance(v, Tensor) else torch.tensor(v)
            elif e.step_value is not None:
                out[e.step_key] = e.step_value
        return out

    def epoch_values(self, which: str = "all") -> dict[str, Tensor]:
        """Epoch reductions of on_epoch entries (sync_dist reduced across ranks)."""
        out = {}
        for e in self.entries.values():
            if not e.on_epoch or (which == "logger" and not e.logger) or (
                    which == "prog_bar" and not e.prog_bar):
                continue
            v = self._epoch_value(e)
            if v is not None:
                out[e.epoch_key] = v
        return out

    def _epoch_value(self, e: LogEntry) -> Tensor | None:
        if e.metric is not None:
            v = e.metric.compute()
            return v if isinstance(v, Tensor) else torch.tensor(v)
        if e.reduce == "mean":
            e.fold()
        if e.acc is None:
            return None
        if e.reduce == "mean":
            if e.sync_dist and self.strategy is not None and self.strategy.world_size > 1:
                both = torch.stack([e.acc.double(), e.acc.new_tensor(e.weight).double()])
                both = self.strategy.reduce(both, "sum")
                return (both[0] / both[1]).to(e.acc.dtype)
            return e.acc / e.weight
        if e.sync_dist:
            return self.strategy.reduce(e.acc, e.reduce)
        return e.acc

    def reset_epoch(self) -> None:
        """Forget the epoch's accumulators and reset logged Metrics (at each epoch start/end)."""
        for e in self.entries.values():
            e.acc = None
            e.weight = 0
            e.pending, e.pending_w = [], []
            e.step_value = None
            if e.metric is not None:
                e.metric.reset()

    def clear(self) -> None:
        self.entries.clear()

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Accumulators of plain (non-Metric) entries, to resume an epoch mid-way exactly."""
        return {k: {**e.options(), "acc": e.acc, "weight": e.weight, "step_value": e.step_value,
                    "pending": torch.stack(e.pending) if e.pending else None,
                    "pending_w": list(e.pending_w)}
                for k, e in self.entries.items() if e.metric is None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, s in state.items():
            e = LogEntry(s["name"], s["on_step"], s["on_epoch"], s["prog_bar"], s["logger"],
                         s["reduce"], s["sync_dist"])
            e.acc, e.weight, e.step_value = s["acc"], s["weight"], s["step_value"]
            if s.get("pending") is not None:
                e.pending = list(s["pending"].unbind())
                e.pending_w = list(s["pending_w"])
            self.entries[k] = e


def extract_batch_size(batch: Any) -> int:
    """Length of the first tensor found in the batch (1 if none), as Lightning does."""
    if type(batch) in (tuple, list) and batch and type(batch[0]) is Tensor:  # (x, y): no walk
        return batch[0].shape[0] if batch[0].ndim else 1
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else 1
    if isinstance(batch, str):
        return 1
    if isinstance(batch, dict):
        for v in batch.values():
            n = extract_batch_size(v)
            if n:
                return n
        return 1
    if isinstance(batch, list | tuple):
        for v in batch:
            n = extract_batch_size(v)
            if n:
                return n
        return 1
    if hasattr(batch, "__dataclass_fields__"):
        for f in batch.__dataclass_fields__:
            n = extract_batch_size(getattr(batch, f))
            if n:
                return n
    return 1


@contextlib.contextmanager
def logging_as(module: Any, results: Results | None, fx: str) -> Iterator[None]:
    """While the block runs, ``self.log`` in ``module`` records into ``results`` with the
    defaults of hook kind ``fx`` (a key of FX_DEFAULTS); what was there before comes back
    after, so a validation run inside a training epoch leaves the epoch's logging as it was."""
    prev_results = module._results
    prev_fx = results.fx if results is not None else ""
    module._results = results
    if results is not None:
        results.fx = fx
    try:
        yield
    finally:
        module._results = prev_results
        if results is not None:
            results.fx = prev_fx
