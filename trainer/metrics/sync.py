"""Synchronisation of metric states across processes with as few collectives as possible.

All tensor states reducing by sum / mean / max / min, of every metric synced together, are
flattened into one buffer per (reduce op, dtype) and reduced with one ``all_reduce`` each. The
sizes, dtypes and trailing shapes of all 'cat' states (and of states with a custom reduce
function) ride along in the int64 sum bucket (each rank writes its own slots), so every rank
knows them after the first all_reduce; then one ``all_gather`` of a padded byte buffer carries
the data of all of them. A collection of classification metrics (shared confusion matrix +
AUROC's cat states) therefore syncs with 2 collective calls.

Collectives run on a dedicated gloo group with its own timeout, on CPU tensors, so a
``compute()`` reached on only some ranks fails with :class:`MetricSyncError` instead of hanging.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["MetricSyncError", "distributed_available", "sync_states", "sync_group"]

_MAX_TRAILING = 4  # trailing dims of a cat state carried in the metadata
_META = 2 + _MAX_TRAILING  # per cat state and rank: rows, dtype code, trailing dims (-1 = unused)
_DTYPES: list[torch.dtype] = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
]
_DTYPE_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
_GROUPS: dict[tuple[int, float], tuple[Any, Any]] = {}

# Collective entry points, looked up at call time (tests wrap them to count calls).
_REDUCE_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


class MetricSyncError(RuntimeError):
    """A metric sync failed: most often ``compute()`` ran on some ranks but not all."""


def distributed_available() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _timeout_message(what: str, timeout: float, err: BaseException) -> str:
    return (
        f"metric sync: {what} did not complete within {timeout:g} s on rank "
        f"{dist.get_rank()}/{dist.get_world_size()}. compute() of a metric (or a metric "
        "collection) must run on every rank, the same metrics in the same order: call it "
        "on all ranks, or use sync_on_compute=False / metric.compute() inside "
        f"`with metric.sync_context(should_sync=False)` for a rank-local value. ({err})"
    )


def sync_group(timeout: float, process_group: Any = None) -> Any:
    """The gloo group used for metric syncs (created once per default group and timeout).

    Creating it is itself a collective: it happens on the first sync, which every rank reaches
    together when the metrics are used correctly (and which times out otherwise).
    """
    if process_group is not None:
        return process_group
    default = dist.distributed_c10d._get_default_group()
    key = (id(default), float(timeout))
    hit = _GROUPS.get(key)
    if hit is not None and hit[0] is default:
        return hit[1]
    try:
        group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=timeout)
        )
    except RuntimeError as err:
        msg = _timeout_message("creating the metric sync group", timeout, err)
        raise MetricSyncError(msg) from err
    _GROUPS[key] = (default, group)
    return group


def sync_states(
    states: Sequence[dict[str, Any]],
    reductions: Sequence[dict[str, str | Callable | None]],
    timeout: float = 120.0,
    process_group: Any = None,
) -> list[dict[str, Any]]:
    """Reduce the given metric states across all ranks; returns new state dicts (same keys).

    ``states[i][name]`` is a tensor (for sum/mean/max/min/callable) or a list of tensors
    ('cat'); ``reductions[i][name]`` its reduce function. Callable reductions receive the
    states of all ranks stacked on a new first dim. States with reduction None are kept local.
    Every rank must call this with the same metrics (same names, reductions and tensor shapes).
    """
    group = sync_group(timeout, process_group)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    out: list[dict[str, Any]] = [dict(s) for s in states]

    # 1. plan: buckets of reducible tensors, list of gathered (cat / callable) states
    buckets: dict[tuple[str, torch.dtype], list[tuple[int, str, Tensor]]] = {}
    gathered: list[tuple[int, str, Tensor | None, Any]] = []
    for i, (st, red) in enumerate(zip(states, reductions)):
        for name, value in st.items():
            fx = red[name]
            if fx is None:
                continue
            if isinstance(fx, str) and fx in _REDUCE_OPS and isinstance(value, Tensor):
                op = "sum" if fx == "mean" else fx
                buckets.setdefault((op, value.dtype), []).append((i, name, value))
            else:  # 'cat' list state, or a callable reduction
                if isinstance(value, list):
                    local = _cat_local(value)
                else:
                    local = value.unsqueeze(0)  # callable: gather one row per rank
                gathered.append((i, name, local, fx))

    # metadata of the gathered states goes into the int64 sum bucket: world × n × _META slots
    meta: Tensor | None = None
    if gathered:
        meta = torch.zeros(world, len(gathered), _META, dtype=torch.int64)
        for j, (_, _, local, _) in enumerate(gathered):
            meta[rank, j] = _encode(local)
        buckets.setdefault(("sum", torch.int64), []).append((-1, "__meta__", meta))

    # 2. one all_reduce per bucket
    for (op, _dtype), entries in buckets.items():
        flat = torch.cat([t.detach().reshape(-1).cpu() for _, _, t in entries])
        _all_reduce(flat, op, group, timeout)
        offset = 0
        for i, name, t in entries:
            n = t.numel()
            piece = flat[offset : offset + n].view(t.shape)
            offset += n
            if i < 0:
                meta = piece
                continue
            if reductions[i][name] == "mean":
                piece = piece / world
            out[i][name] = piece.to(t.device)

    # 3. one all_gather of the padded bytes of all gathered states
    if gathered:
        assert meta is not None
        nbytes = torch.zeros(world, dtype=torch.int64)
        layouts: list[list[tuple[torch.dtype | None, tuple[int, ...]]]] = []
        for j in range(len(gathered)):
            dtype, trailing = _decode_common(meta[:, j])
            rows_layout = []
            for r in range(world):
                n_rows = int(meta[r, j, 0])
                rows_layout.append((dtype, (n_rows, *trailing)))
                if dtype is not None and n_rows:
                    nbytes[r] += n_rows * math.prod(trailing) * _itemsize(dtype)
            layouts.append(rows_layout)
        width = int(nbytes.max())
        local_bytes = [
            _to_bytes(local) for _, _, local, _ in gathered if local is not None and local.numel()
        ]
        send = torch.zeros(width, dtype=torch.uint8)
        if local_bytes:
            payload = torch.cat(local_bytes)
            send[: payload.numel()] = payload
        recv = [torch.empty(width, dtype=torch.uint8) for _ in range(world)]
        _all_gather(recv, send, group, timeout)
        offsets = [0] * world
        for j, (i, name, _local, fx) in enumerate(gathered):
            parts = []
            for r in range(world):
                dtype, shape = layouts[j][r]
                if dtype is None or shape[0] == 0:
                    continue
                n = math.prod(shape) * _itemsize(dtype)
                chunk = recv[r][offsets[r] : offsets[r] + n]
                offsets[r] += n
                parts.append(_from_bytes(chunk, dtype, shape))
            device = _state_device(states[i][name])
            if isinstance(states[i][name], list):
                out[i][name] = [torch.cat(parts).to(device)] if parts else []
            else:
                stacked = torch.cat(parts).to(device)
                out[i][name] = fx(stacked)
    return out


def _cat_local(value: list[Tensor]) -> Tensor | None:
    if not value:
        return None
    if len(value) == 1:
        t = value[0]
    else:
        t = torch.cat([v.reshape(-1, *v.shape[1:]) if v.dim() else v.reshape(1) for v in value])
    return t if t.dim() else t.reshape(1)


def _state_device(value: Any) -> torch.device:
    if isinstance(value, Tensor):
        return value.device
    if value:
        return value[0].device
    return torch.device("cpu")


def _encode(local: Tensor | None) -> Tensor:
    row = torch.full((_META,), -1, dtype=torch.int64)
    if local is None or local.numel() == 0:
        row[0] = 0
        return row
    if local.dim() - 1 > _MAX_TRAILING:
        raise ValueError(
            f"metric sync: a 'cat' state has {local.dim() - 1} trailing dims (at most "
            f"{_MAX_TRAILING} are supported): flatten it in update()"
        )
    row[0] = local.shape[0]
    row[1] = _DTYPE_CODE[local.dtype]
    for k, d in enumerate(local.shape[1:]):
        row[2 + k] = d
    return row


def _decode_common(meta_j: Tensor) -> tuple[torch.dtype | None, tuple[int, ...]]:
    """The dtype and trailing shape of one gathered state, from the first rank that has data."""
    for r in range(meta_j.shape[0]):
        if int(meta_j[r, 0]) > 0:
            dtype = _DTYPES[int(meta_j[r, 1])]
            trailing = tuple(int(d) for d in meta_j[r, 2:] if int(d) >= 0)
            for q in range(meta_j.shape[0]):
                if int(meta_j[q, 0]) > 0 and not torch.equal(meta_j[q, 1:], meta_j[r, 1:]):
                    raise MetricSyncError(
                        "metric sync: a 'cat' state has different dtypes or trailing shapes "
                        f"on ranks {r} and {q}: every rank must append tensors of one kind"
                    )
            return dtype, trailing
    return None, ()


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _to_bytes(t: Tensor) -> Tensor:
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8)


def _from_bytes(chunk: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    if dtype == torch.bool:
        return chunk.clone().view(shape).to(torch.bool)
    return chunk.clone().view(dtype).view(shape)


def _all_reduce(t: Tensor, op: str, group: Any, timeout: float) -> None:
    try:
        dist.all_reduce(t, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]), group=group)
    except RuntimeError as err:
        raise MetricSyncError(_timeout_message("all_reduce", timeout, err)) from err


def _all_gather(out: list[Tensor], t: Tensor, group: Any, timeout: float) -> None:
    try:
        dist.all_gather(out, t, group=group)
    except RuntimeError as err:
        raise MetricSyncError(_timeout_message("all_gather", timeout, err)) from err
