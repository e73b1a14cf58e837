"""The Metric base: states declared once with ``add_state``, subclasses write update/compute.

A subclass declares its states in ``__init__`` with :meth:`Metric.add_state` and writes
``update(...)`` (accumulate into the states, out of place: ``self.x = self.x + delta``) and
``compute()`` (the value from the states). The base class gives:

- ``forward(...)``: ONE update per call. The states are swapped for fresh defaults, ``update``
  fills them with the batch's statistics, the batch value is computed from them (and kept in
  ``_forward_cache``, which the Trainer logs on_step), then the batch state is merged into the
  running state by the states' reduce functions (sum: add, max/min, cat: extend, mean: weighted).
- ``compute()``: synced across ranks (when torch.distributed runs with more than one process)
  with one collective per (reduce op, dtype) bucket plus one gather for all 'cat' states, local
  states restored afterwards; cached until the next update / reset.
- ``reset()``, ``merge_state(other)``, ``clone()``, ``sync_context()``, ``state_dict`` /
  ``load_state_dict`` of persistent states, and ``.to(device)`` moving every state.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trainer.metrics.sync import distributed_available, sync_states

__all__ = ["Metric", "sync_metrics"]

_REDUCTIONS = ("sum", "mean", "max", "min", "cat")
# member → its MetricCollection (set by the collection): a member's own synced compute() then
# computes the whole collection with one bucketed sync (Trainer logging calls members one by one)
_COLLECTION_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _wrap_update(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def update(self: Metric, *args: Any, **kwargs: Any) -> None:
        d = self.__dict__  # plain dict writes: nn.Module.__setattr__ is slow on the hot path
        d["_computed"] = None
        fn(self, *args, **kwargs)
        d["_update_count"] += 1
        if d["compute_on_cpu"] and d["_list_states"]:
            self._move_list_states_to_cpu()

    update._raw = fn  # type: ignore[attr-defined]
    return update


def _wrap_compute(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def compute(self: Metric) -> Any:
        if self._computed is not None:
            return self._computed
        self._check_deferred_errors()
        if self._update_count == 0 and not self._synced and not distributed_available():
            warnings.warn(
                f"{type(self).__name__}.compute() was called before any update(): the value "
                "comes from the default states",
                UserWarning,
                stacklevel=2,
            )
        if self._synced or not (self.sync_on_compute and distributed_available()):
            value = fn(self)
        else:
            ref = _COLLECTION_OF.get(self)
            owner = ref() if ref is not None else None
            if owner is not None and any(m is self for m in owner.values()):
                owner.compute()  # one sync for every member; caches each member's value
                if self.__dict__["_computed"] is not None:
                    return self.__dict__["_computed"]
            with sync_metrics([self]):
                value = fn(self)
        self.__dict__["_computed"] = value
        return value

    compute._raw = fn  # type: ignore[attr-defined]
    return compute


class Metric(nn.Module):
    """Base class of all metrics (see the module docstring).

    Args:
        sync_on_compute: sync the states across ranks in ``compute()`` (default True).
        compute_on_cpu: keep 'cat' states on CPU (moved after each update) to bound GPU memory.
        sync_timeout: seconds a sync may wait for the other ranks before failing with
            :class:`~trainer.metrics.sync.MetricSyncError` (default 120).
        process_group: a gloo-capable group to sync over instead of the default world.
        dist_sync_on_step: ``forward``'s batch value is computed from the batch states of all
            ranks (one sync per call, as in torchmetrics); the running states stay local
            until ``compute()``. Default False: the batch value is this rank's alone.
        validate_args: check input shapes, dtypes and value ranges (default True). On CPU the
            range checks are cheap; on accelerators they are deferred to ``compute()`` so
            ``update`` never waits for the device.
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    # True where update() never modifies a state in place (self.x = self.x + v): then fresh
    # states can be the default tensors themselves (no clone per forward / reset). Subclasses
    # that update in place (self.x += v) must leave it False.
    _pure_update: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "update" in cls.__dict__ and not hasattr(cls.__dict__["update"], "_raw"):
            cls.update = _wrap_update(cls.__dict__["update"])  # type: ignore[method-assign]
        if "compute" in cls.__dict__ and not hasattr(cls.__dict__["compute"], "_raw"):
            cls.compute = _wrap_compute(cls.__dict__["compute"])  # type: ignore[method-assign]
        if "forward" in cls.__dict__:  # calling the metric is its forward (see Metric.__call__)
            cls.__call__ = cls.__dict__["forward"]  # type: ignore[method-assign]

    def __init__(
        self,
        *,
        sync_on_compute: bool = True,
        compute_on_cpu: bool = False,
        sync_timeout: float = 120.0,
        process_group: Any = None,
        validate_args: bool = True,
        dist_sync_on_step: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(dist_sync_on_step, bool):
            raise ValueError(f"{type(self).__name__}(dist_sync_on_step=...): must be True or "
                             f"False (got {dist_sync_on_step!r})")
        self.dist_sync_on_step = dist_sync_on_step
        if sync_timeout <= 0:
            raise ValueError(
                f"{type(self).__name__}.sync_timeout: must be > 0 (got {sync_timeout})"
            )
        self.sync_on_compute = sync_on_compute
        self.compute_on_cpu = compute_on_cpu
        self.sync_timeout = float(sync_timeout)
        self.process_group = process_group
        self.validate_args = validate_args
        self._defaults: dict[str, Tensor | list] = {}
        self._reductions: dict[str, str | Callable | None] = {}
        self._persistent: dict[str, bool] = {}
        self._list_states: tuple[str, ...] = ()
        self._tensor_states: tuple[str, ...] = ()
        # every state in declaration order and its reduction (forward's swap and merge loop)
        self._state_names: tuple[str, ...] = ()
        self._state_fx: tuple[str | Callable | None, ...] = ()
        self._sum_only = False  # every state a tensor reduced by 'sum' (forward's fast merge)
        self._one_sum_state: str | None = None  # the name, where that is the only state
        self._update_count = 0
        self._in_forward = False
        self._computed: Any = None
        self._forward_cache: Any = None
        self._synced = False
        self._deferred: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ states
    def add_state(
        self,
        name: str,
        default: Tensor | list,
        dist_reduce_fx: str | Callable | None = "sum",
        persistent: bool = False,
    ) -> None:
        """Declare a state: a tensor, or an empty list (a growing 'cat' state).

        ``dist_reduce_fx``: 'sum' | 'mean' | 'max' | 'min' | 'cat' | a callable taking the
        states of all ranks stacked on dim 0 | None (never synced, kept local).
        """
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"add_state: name must be a public identifier (got {name!r})")
        if isinstance(default, list):
            if default:
                raise ValueError(f"add_state({name!r}): a list default must be empty")
            if dist_reduce_fx not in ("cat", None):
                raise ValueError(
                    f"add_state({name!r}): a list state reduces with 'cat' or None "
                    f"(got {dist_reduce_fx!r})"
                )
        elif not isinstance(default, Tensor):
            raise TypeError(
                f"add_state({name!r}): default must be a tensor or an empty list "
                f"(got {type(default).__name__})"
            )
        if isinstance(dist_reduce_fx, str) and dist_reduce_fx not in _REDUCTIONS:
            raise ValueError(
                f"add_state({name!r}): dist_reduce_fx must be one of {_REDUCTIONS}, a callable "
                f"or None (got {dist_reduce_fx!r})"
            )
        if isinstance(default, Tensor) and dist_reduce_fx == "cat":
            raise ValueError(f"add_state({name!r}): a 'cat' state needs an empty list default")
        self._defaults[name] = [] if isinstance(default, list) else default.detach().clone()
        self._reductions[name] = dist_reduce_fx
        self._persistent[name] = persistent
        if name not in self._state_names:
            self._state_names = (*self._state_names, name)
        self._state_fx = tuple(self._reductions[n] for n in self._state_names)
        self._sum_only = all(fx == "sum" for fx in self._state_fx)  # list states: 'cat'/None
        self._one_sum_state = (  # (forward's fast path has no per-step sync: not with one)
            name if self._sum_only and self._pure_update and len(self._state_names) == 1
            and not self.dist_sync_on_step else None
        )
        if isinstance(default, list):
            self._list_states = (*self._list_states, name)
            object.__setattr__(self, name, [])
        else:
            self._tensor_states = (*self._tensor_states, name)
            # pure updates never write in place: the state may be the default object itself
            # (then the first update / forward merge takes the batch state without an add)
            d = self._defaults[name]
            object.__setattr__(self, name, d if self._pure_update else d.clone())

    def _state_refs(self) -> dict[str, Any]:
        d = self.__dict__
        return {name: d[name] for name in self._defaults}

    def _set_states(self, states: dict[str, Any]) -> None:
        d = self.__dict__
        for name, value in states.items():
            d[name] = value

    def _fresh_states(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        pure = self._pure_update
        for name, default in self._defaults.items():
            if isinstance(default, list):
                d[name] = []
            else:
                d[name] = default if pure else default.clone()
        return d

    def _accumulate(self, name: str, value: Tensor | int | float) -> None:
        """state := state + value (the value itself while the state is the fresh default).

        Inside forward the batch value keeps its own dtype (no cast: compute reads it, and the
        merge into the running state promotes it), and a host number (a count known from the
        shapes) stays a number: the batch state costs no tensor op, the merge adds it.
        """
        d = self.__dict__
        cur = d[name]
        if cur is d["_defaults"][name]:
            if d["_in_forward"]:
                d[name] = value
            elif value.__class__ in (int, float):
                d[name] = cur + value
            else:
                d[name] = value if value.dtype == cur.dtype else value.to(cur.dtype)
        else:
            d[name] = cur + value

    @property
    def update_count(self) -> int:
        """How many times update (or forward) ran since the last reset."""
        return self._update_count

    # ------------------------------------------------------------------ api
    def update(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - abstract
        """Accumulate a batch into the states (subclasses implement)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def compute(self) -> Any:  # pragma: no cover - abstract
        """The metric value from the states (subclasses implement)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Accumulate the batch (one update) and return the metric on this batch alone."""
        d = self.__dict__
        cls = type(self)
        one = d["_one_sum_state"]
        if one is not None:
            # one summed tensor state and a pure update (confusion matrices, histograms): the
            # steps of the general path below with the fewest Python lines between the tensor
            # ops (on a slow host each line shows in the per-batch cost)
            old = d[one]
            defaults = d["_defaults"]
            d[one] = defaults[one]
            count = d["_update_count"]
            d["_update_count"] = 0
            d["_in_forward"] = True
            try:
                cls.update._raw(self, *args, **kwargs)
                d["_in_forward"] = False
                d["_update_count"] = 1
                if d["_deferred"]:
                    self._check_deferred_errors(keep=True)
                value = cls.compute._raw(self)
            except BaseException:
                d[one] = old
                d["_update_count"] = count
                d["_in_forward"] = False
                raise
            new = d[one]
            if old is not defaults[one] or new.__class__ in (int, float):
                d[one] = old + new
            elif new.dtype != old.dtype:
                d[one] = new.to(old.dtype)
            d["_update_count"] = count + 1
            d["_computed"] = None
            d["_forward_cache"] = value
            return value
        names = d["_state_names"]
        # the running states step aside for fresh defaults (the defaults themselves where
        # update never writes in place): update fills them with the batch's statistics
        running = list(map(d.__getitem__, names))
        if self._pure_update and not d["_list_states"]:
            d.update(d["_defaults"])
        else:
            d.update(self._fresh_states())
        count = d["_update_count"]
        d["_update_count"] = 0
        d["_in_forward"] = True
        try:
            cls.update._raw(self, *args, **kwargs)
            d["_in_forward"] = False
            if d["compute_on_cpu"] and d["_list_states"]:
                self._move_list_states_to_cpu()
            d["_update_count"] = 1
            if d["_deferred"]:
                self._check_deferred_errors(keep=True)
            if d["dist_sync_on_step"] and distributed_available():
                with sync_metrics([self]):  # the batch states of every rank, then back
                    value = cls.compute._raw(self)
            else:
                value = cls.compute._raw(self)
        except BaseException:
            for n, v in zip(names, running):
                d[n] = v
            d["_update_count"] = count
            d["_in_forward"] = False
            raise
        if d["_sum_only"]:
            # every state a tensor summed (the common case): one add per state; a running
            # state still the default takes the batch state (see _merge_batch)
            defaults = d["_defaults"]
            for name, old in zip(names, running):
                new = d[name]
                if old is not defaults[name] or new.__class__ in (int, float):
                    d[name] = old + new
                elif new.dtype != old.dtype:
                    d[name] = new.to(old.dtype)
        else:
            self._merge_batch(running, count)
        d["_update_count"] = count + 1
        d["_computed"] = None
        d["_forward_cache"] = value
        return value

    # metric(...) is forward(...) itself: no nn.Module hook machinery (metrics take no hooks)
    # and no extra call layer; subclasses that override forward get the same (__init_subclass__)
    __call__ = forward

    def _merge_batch(self, running: list[Any], n_running: int, n_new: int = 1) -> None:
        """self's states := reduce(running, self's current (batch) states).

        ``running`` holds the running states in ``_state_names`` order. A running state that
        is still the default object (nothing accumulated) is replaced by the batch state (cast
        to the state's dtype; a host number becomes a tensor by one add). 'mean' states are
        weighted by the update counts ``n_running`` and ``n_new``.
        """
        d = self.__dict__
        defaults = d["_defaults"]
        for name, fx, old in zip(d["_state_names"], d["_state_fx"], running):
            new = d[name]
            if old.__class__ is list:
                if old:  # extended in place, as update appends in place
                    old.extend(new)
                    d[name] = old
            elif new.__class__ in (int, float):
                d[name] = old + new
            elif old is defaults[name]:
                if new.dtype != old.dtype:
                    d[name] = new.to(old.dtype)
            elif fx == "sum":
                d[name] = old + new
            elif fx == "max":
                d[name] = torch.maximum(old, new)
            elif fx == "min":
                d[name] = torch.minimum(old, new)
            elif fx == "mean":
                d[name] = (old * n_running + new * n_new) / (n_running + n_new)
            elif not n_running:
                d[name] = new if new.dtype == old.dtype else new.to(old.dtype)
            elif callable(fx):
                d[name] = fx(torch.stack([old, new]))
            # None: the latest state stays

    def _merge_states(self, running: dict[str, Any], n_running: int, n_new: int = 1) -> None:
        """_merge_batch with the running states as a dict by name."""
        self._merge_batch([running[n] for n in self._state_names], n_running, n_new)

    def reset(self) -> None:
        """Back to the default states; clears the cached value."""
        self._set_states(self._fresh_states())
        self._update_count = 0
        self._computed = None
        self._forward_cache = None
        self._deferred = {}

    def merge_state(self, other: Metric | dict[str, Any]) -> None:
        """Merge another metric's (same class and configuration) or a state dict into this one."""
        if isinstance(other, Metric):
            if type(other) is not type(self):
                raise TypeError(
                    f"merge_state: expected a {type(self).__name__} (got {type(other).__name__})"
                )
            incoming = other._state_refs()
            other_count = other._update_count
        elif isinstance(other, dict):
            missing = set(self._defaults) - set(other)
            if missing:
                raise ValueError(f"merge_state: the state dict lacks {sorted(missing)}")
            incoming = {k: other[k] for k in self._defaults}
            other_count = 1
        else:
            raise TypeError(
                f"merge_state: expected a Metric or a dict (got {type(other).__name__})"
            )
        running = self._state_refs()
        count = self._update_count
        self._set_states(
            {k: (list(v) if isinstance(v, list) else v.to(self._device_of(running[k])))
             for k, v in incoming.items()}
        )
        self._merge_states(running, count, other_count)
        self._update_count = count + other_count
        self._computed = None

    @staticmethod
    def _device_of(value: Any) -> torch.device:
        if isinstance(value, Tensor):
            return value.device
        return value[0].device if value else torch.device("cpu")

    def clone(self) -> Metric:
        """A deep copy (states included)."""
        return copy.deepcopy(self)

    @contextlib.contextmanager
    def sync_context(self, should_sync: bool = True) -> Iterator[Metric]:
        """Inside, the states are the synced (global) ones; local states restored at exit.

        ``should_sync=False`` (or no distributed run) gives the local states; inside, a
        ``compute()`` does not sync again.
        """
        if should_sync and distributed_available():
            with sync_metrics([self]):
                yield self
        else:
            was = self._synced
            self._synced = True
            cached = self._computed
            self._computed = None
            try:
                yield self
            finally:
                self._synced = was
                self._computed = cached

    # ------------------------------------------------------------------ checks
    def _check(self, bad: Tensor, message: str) -> None:
        """Raise ValueError(message) where ``bad`` (a bool scalar tensor) is True.

        On CPU this is checked now; on an accelerator it is deferred to compute() (no host
        sync in update).
        """
        if bad.device.type == "cpu":
            if bool(bad):
                raise ValueError(message)
        else:
            prev = self._deferred.get(message)
            self._deferred[message] = bad if prev is None else (prev | bad)

    def _check_deferred_errors(self, keep: bool = False) -> None:
        if not self._deferred:
            return
        for message, bad in list(self._deferred.items()):
            if bool(bad):
                self._deferred = {}
                raise ValueError(message)
        if not keep:
            self._deferred = {}

    # ------------------------------------------------------------------ devices / dicts
    def _move_list_states_to_cpu(self) -> None:
        d = self.__dict__
        for name in self._list_states:
            lst = d[name]
            if lst and lst[-1].device.type != "cpu":
                d[name] = [t.cpu() for t in lst]

    def _apply(self, fn: Callable, recurse: bool = True) -> Metric:  # type: ignore[override]
        """Move states with the module (``.to(device)``); their dtypes stay."""
        super()._apply(fn, recurse)
        d = self.__dict__

        def move(t: Tensor) -> Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else out.to(t.dtype)

        for name in self._tensor_states:
            d[name] = move(d[name])
            self._defaults[name] = move(self._defaults[name])  # type: ignore[arg-type]
        for name in self._list_states:
            if not self.compute_on_cpu:
                d[name] = [move(t) for t in d[name]]
        self._computed = None
        return self

    @property
    def device(self) -> torch.device:
        """The device of the tensor states (CPU when the metric has none)."""
        for name in self._tensor_states:
            return self.__dict__[name].device
        return torch.device("cpu")

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, persistent in self._persistent.items():
            if not persistent:
                continue
            value = self.__dict__[name]
            if isinstance(value, list):
                value = torch.cat([v.reshape(-1, *v.shape[1:]) for v in value]) if value else (
                    torch.empty(0)
                )
            destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        rest = dict(state_dict)
        for name, persistent in self._persistent.items():
            key = prefix + name
            if key in rest:
                value = rest.pop(key)
                if not persistent:
                    continue  # tolerate a state saved as persistent by another configuration
                device = self._device_of(self.__dict__[name]) if self._tensor_states else None
                if name in self._list_states:
                    self.__dict__[name] = [value] if value.numel() else []
                else:
                    self.__dict__[name] = value.to(device or value.device)
                self._computed = None
            elif persistent and strict:
                missing_keys.append(key)
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_in_forward", False)  # pickled by an older version
        state.setdefault("dist_sync_on_step", False)
        if "_state_names" not in state:
            state["_state_names"] = tuple(state["_defaults"])
            state["_state_fx"] = tuple(state["_reductions"][n] for n in state["_state_names"])
            state["_sum_only"] = False
            state["_one_sum_state"] = None
        super().__setstate__(state)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["process_group"] = None  # groups do not pickle; the default world is used
        return state


@contextlib.contextmanager
def sync_metrics(metrics: Sequence[Metric]) -> Iterator[None]:
    """Sync the states of several metrics together (one bucketed sync), restore them at exit.

    Inside, each metric's states are the global ones and its compute() does not sync again.
    """
    metrics = list(metrics)
    if not metrics:
        yield
        return
    local = [m._state_refs() for m in metrics]
    cached = [m._computed for m in metrics]
    counts = [m._update_count for m in metrics]
    for m in metrics:
        m._check_deferred_errors()
    synced = sync_states(
        local,
        [m._reductions for m in metrics],
        timeout=min(m.sync_timeout for m in metrics),
        process_group=metrics[0].process_group,
    )
    for m, st in zip(metrics, synced):
        m._set_states(st)
        m._synced = True
        m._computed = None
        m._update_count = max(m._update_count, 1)
    try:
        yield
    finally:
        for m, st, c, n in zip(metrics, local, cached, counts):
            m._set_states(st)
            m._synced = False
            m._computed = c
            m._update_count = n
