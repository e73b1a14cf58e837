"""MetricCollection: several metrics updated, computed and synced together.

- Compute groups: members whose ``_compute_group_key()`` agree (e.g. Accuracy, Precision,
  Recall, F1Score of one task configuration: one confusion matrix; AUROC and
  AveragePrecision: the same stored scores) share one state; only the first member of a group
  runs ``update``, the others point at its state.
- ``compute()`` syncs all members in one bucketed sync (see :mod:`trainer.metrics.sync`).
- ``forward()`` runs one update per group and returns every member's batch value.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch import nn

from trainer.metrics.metric import _COLLECTION_OF, Metric, sync_metrics
from trainer.metrics.sync import distributed_available

__all__ = ["MetricCollection"]


class MetricCollection(nn.ModuleDict):
    """A dict of metrics with a shared update / compute / sync.

    Args:
        metrics: a dict name → Metric, a list of metrics (named by class), or one metric.
        prefix / postfix: added to the keys of ``compute()`` / ``forward()`` results.
        compute_groups: share states between members that need the same statistics.
    """

    def __init__(
        self,
        metrics: Metric | Sequence[Metric] | dict[str, Metric],
        prefix: str | None = None,
        postfix: str | None = None,
        compute_groups: bool = True,
    ) -> None:
        super().__init__()
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"MetricCollection.prefix: must be a str (got {prefix!r})")
        if postfix is not None and not isinstance(postfix, str):
            raise ValueError(f"MetricCollection.postfix: must be a str (got {postfix!r})")
        self.prefix = prefix or ""
        self.postfix = postfix or ""
        self._use_groups = compute_groups
        self.add_metrics(metrics)

    def add_metrics(self, metrics: Metric | Sequence[Metric] | dict[str, Metric]) -> None:
        """Add metrics (the compute groups are rebuilt)."""
        if isinstance(metrics, Metric):
            metrics = [metrics]
        if isinstance(metrics, dict):
            items: Iterable[tuple[str, Any]] = metrics.items()
        elif isinstance(metrics, Sequence):
            items = [(type(m).__name__, m) for m in metrics]
        else:
            raise TypeError(
                "MetricCollection: expected a dict, a list or a Metric "
                f"(got {type(metrics).__name__})"
            )
        for name, metric in items:
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"MetricCollection[{name!r}]: expected a Metric (got {type(metric).__name__})"
                )
            if name in self._modules:
                raise ValueError(
                    f"MetricCollection: two metrics named {name!r}; pass a dict to name them"
                )
            self[name] = metric
        self._build_groups()

    def _build_groups(self) -> None:
        groups: dict[Any, list[str]] = {}
        order: list[list[str]] = []
        for name, metric in self._modules.items():
            key_fn = getattr(metric, "_compute_group_key", None)
            key = key_fn() if (self._use_groups and key_fn is not None) else None
            if key is None:
                order.append([name])
                continue
            key = (key, str(metric.device), metric.dist_sync_on_step)
            if key in groups:
                groups[key].append(name)
            else:
                groups[key] = [name]
                order.append(groups[key])
        self._groups = order
        self._update_kwargs = {n: _accepted_kwargs(m) for n, m in self._modules.items()}
        me = weakref.ref(self)
        for m in self._modules.values():
            _COLLECTION_OF[m] = me
        for members in self._groups:
            self._share(members)

    @property
    def compute_groups(self) -> list[list[str]]:
        """The member names of each compute group (first = the one that updates)."""
        return [list(g) for g in self._groups]

    def _share(self, members: list[str]) -> None:
        if len(members) < 2:
            return
        leader = self._modules[members[0]]
        refs = leader._state_refs()  # type: ignore[union-attr]
        for name in members[1:]:
            m = self._modules[name]
            m._set_states(refs)  # type: ignore[union-attr]
            m._update_count = leader._update_count  # type: ignore[union-attr]
            m._computed = None  # type: ignore[union-attr]
            m._deferred = leader._deferred  # type: ignore[union-attr]

    def _kwargs_for(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        accepted = self._update_kwargs[name]
        if accepted is None or not kwargs:
            return kwargs
        return {k: v for k, v in kwargs.items() if k in accepted}

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}{self.postfix}"

    # ------------------------------------------------------------------ api
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update each compute group once."""
        for members in self._groups:
            leader = self._modules[members[0]]
            leader.update(*args, **self._kwargs_for(members[0], kwargs))
            self._share(members)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One update per group; returns every member's value on this batch."""
        out: dict[str, Any] = {}
        for members in self._groups:
            leader: Metric = self._modules[members[0]]  # type: ignore[assignment]
            if len(members) == 1:
                out[self._key(members[0])] = leader(*args, **self._kwargs_for(members[0], kwargs))
                continue
            running = leader._state_refs()
            count = leader._update_count
            leader._set_states(leader._fresh_states())
            try:
                type(leader).update._raw(leader, *args, **self._kwargs_for(members[0], kwargs))
                # dist_sync_on_step (the same for a whole group): every rank's batch states
                on_step = leader.dist_sync_on_step and distributed_available()
                with sync_metrics([leader]) if on_step else contextlib.nullcontext():
                    batch = leader._state_refs()
                    for name in members:
                        m: Metric = self._modules[name]  # type: ignore[assignment]
                        m._set_states(batch)
                        m._update_count = 1
                        m._check_deferred_errors(keep=True)
                        value = type(m).compute._raw(m)
                        m._forward_cache = value
                        out[self._key(name)] = value
            except BaseException:
                leader._set_states(running)
                self._share(members)
                raise
            leader._merge_states(running, count, 1)
            leader._update_count = count + 1
            leader._computed = None
            self._share(members)
        return out

    def compute(self) -> dict[str, Any]:
        """Every member's value; one bucketed sync for all of them in a distributed run."""
        leaders = [self._modules[g[0]] for g in self._groups]
        cached = all(self._modules[n]._computed is not None for n in self._modules)
        if cached:
            return {self._key(n): m._computed for n, m in self._modules.items()}
        to_sync = [m for m in leaders if m.sync_on_compute]  # type: ignore[union-attr]
        if distributed_available() and to_sync:
            values: dict[str, Any] = {}
            with sync_metrics(to_sync):  # type: ignore[arg-type]
                for members in self._groups:
                    self._share(members)
                    for name in members:
                        m = self._modules[name]
                        m._synced = True  # type: ignore[union-attr]
                        values[name] = m.compute()
                        m._synced = False  # type: ignore[union-attr]
            for members in self._groups:
                self._share(members)
            for name, value in values.items():
                self._modules[name]._computed = value  # type: ignore[union-attr]
            return {self._key(n): v for n, v in values.items()}
        return {self._key(n): m.compute() for n, m in self._modules.items()}

    def reset(self) -> None:
        """Reset every member (shared states re-linked)."""
        for m in self._modules.values():
            m.reset()  # type: ignore[operator]
        for members in self._groups:
            self._share(members)

    def clone(self, prefix: str | None = None, postfix: str | None = None) -> MetricCollection:
        """A deep copy, optionally with a new prefix / postfix."""
        import copy

        mc = copy.deepcopy(self)
        if prefix is not None:
            mc.prefix = prefix
        if postfix is not None:
            mc.postfix = postfix
        mc._build_groups()
        return mc

    def keys(self, keep_base: bool = False) -> Iterator[str]:  # type: ignore[override]
        """Member names, with prefix / postfix unless keep_base."""
        for name in self._modules:
            yield name if keep_base else self._key(name)

    def items(self, keep_base: bool = False) -> Iterator[tuple[str, Metric]]:  # type: ignore[override]
        """(name, metric) pairs, names with prefix / postfix unless keep_base."""
        for name, m in self._modules.items():
            yield (name if keep_base else self._key(name)), m  # type: ignore[misc]

    def _apply(self, fn: Any, recurse: bool = True) -> MetricCollection:  # type: ignore[override]
        super()._apply(fn, recurse)
        for members in self._groups:
            self._share(members)
        return self

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Load member states; shared group states re-linked to the first member's."""
        out = super().load_state_dict(*args, **kwargs)
        for members in self._groups:
            self._share(members)
        return out


def _accepted_kwargs(metric: nn.Module) -> set[str] | None:
    """Keyword names metric.update accepts (None: any)."""
    fn = getattr(type(metric).update, "_raw", type(metric).update)
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}
