"""Typed stage outputs. Each records where it came from (input hashes, config hash, code version).

They hold paths and hashes, never DataFrames or tensors: they are persisted as Prefect results and
a content hash travels with every path, so a file rewritten in place is never mistaken for the old.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Ref(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitRef(_Ref):
    path: Path
    rows: int
    sha256: str


class DatasetRef(_Ref):
    """The prepared data: parquet splits, their content hash, the schema and the stats summary."""

    root: Path
    splits: dict[str, SplitRef]
    content_hash: str  # over the split files' hashes: identical data → identical hash
    features: list[str]
    label: str
    task: str
    num_classes: int | None
    source: str
    source_hash: str
    stats_path: Path
    schema_path: Path | None = None  # schema.json (tasks/schema.py): columns, dtypes, classes
    cache_key: str
    code_version: str

    def split(self, name: str) -> SplitRef:
        return self.splits[name]


class TrainResult(_Ref):
    """The fitted model: its best checkpoint and the fit metrics."""

    checkpoint: Path
    checkpoint_sha256: str
    metrics: dict[str, float]
    epochs: int
    global_step: int
    mlflow_run_id: str | None = None
    resumed_from: Path | None = None
    data_hash: str
    config_hash: str
    cache_key: str
    code_version: str


class EvalReport(_Ref):
    """Test metrics of the best checkpoint (synced across workers)."""

    metrics: dict[str, float]
    gate_metric: str
    gate_value: float
    checkpoint_sha256: str
    mlflow_run_id: str | None = None
    cache_key: str
    code_version: str


class ExportRef(_Ref):
    """Exported artefacts and their parity with eager PyTorch."""

    onnx: Path | None = None
    onnx_sha256: str | None = None
    torchscript: Path | None = None
    torchscript_sha256: str | None = None
    parity: dict[str, float] = Field(default_factory=dict)
    checkpoint_sha256: str
    cache_key: str
    code_version: str


class RegistryRef(_Ref):
    """A registered model version and what happened at the promotion gate."""

    name: str
    version: str
    promoted: bool | None = None
    decision: str = ""
    alias: str | None = None
    cache_key: str


class DataError(ValueError):
    """The input data is unusable (missing column, non-numeric feature, empty, NaN by policy)."""


class StageError(RuntimeError):
    """A stage could not do its job for a reason that retrying will not fix."""


_PERMANENT: tuple[type[BaseException], ...] = (
    ValueError,  # ConfigError, DataError, pydantic errors
    TypeError,
    KeyError,
    AttributeError,
    ImportError,
    NotImplementedError,
    AssertionError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    StageError,
)


# OSErrors that no retry fixes: disk full, quota, read-only file system, no permission.
_PERMANENT_ERRNOS = frozenset(
    getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT")
    if hasattr(errno, n)
)
# Messages of errors from libraries (SQLite through MLflow/SQLAlchemy, our own checks) that say
# the same: a full disk, a read-only or corrupt store, a corrupt checkpoint, an unusable store.
_PERMANENT_TEXT = (
    "database or disk is full", "readonly database", "read-only file system",
    "database disk image is malformed", "file is not a database", "no space left",
    "cannot be read as a trainflow checkpoint", "is not a trainflow checkpoint",
    "cannot open the mlflow store", "is not writable",
)
_PERMANENT_NAMES = ("CheckpointError", "TrackingUnreachable", "ConfigError")


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT) or type(exc).__name__ in _PERMANENT_NAMES:
        return True
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _PERMANENT_TEXT)


def is_transient(exc: BaseException) -> bool:
    """Whether an error may go away on retry (network, a locked database, lost workers) or not
    (config, data, disk full, read-only, corrupt files, an unusable store)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _permanent(exc):
            return False
        exc = exc.__cause__  # an error raised "from" a permanent one is permanent too
    return True


def retry_transient(task: object, task_run: object, state: object) -> bool:
    """Prefect ``retry_condition_fn``: retry transient errors only."""
    exc = getattr(state, "data", None)
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)  # type: ignore[attr-defined]
        except Exception as err:  # noqa: BLE001 - reading the state must not mask the decision
            exc = err
    return not isinstance(exc, BaseException) or is_transient(exc)


def content_key(fields: Mapping[str, Any]) -> str:
    """A stage's cache key: sha256 of its inputs as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
