"""Stage 1: read CSV or parquet, validate, split deterministically, write parquet splits.

The input is streamed once in record batches (pyarrow datasets): each batch is validated, its rows
are assigned to train/val/test and appended to the split writers, and running statistics are kept.
The split is deterministic and stratified without a first pass: the n-th row of class c goes to the
split that a seeded permutation of block ``n // BLOCK`` of class c gives position ``n % BLOCK``, so
every full block of BLOCK rows of a class holds exactly the configured fractions.

Splits are written as two columns: ``x`` (fixed-size list of float32, the features in order) and
``y`` (int64 class or float32 target), so training gets a zero-copy numpy view of the features.
Everything is written into a temporary folder and renamed into place at the end: a failed or
interrupted run leaves nothing half-written where a reader would look.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from tasks.config import DataConfig
from tasks.schema import build_schema, write_schema
from tasks.types import DataError, DatasetRef, SplitRef, content_key
from trainer.fileio import file_sha256  # also imported from here by export, train, the CLI

if TYPE_CHECKING:
    import pyarrow.dataset as ds

CODE_VERSION = "prepare_data-4"
BLOCK = 100
SPLITS = ("train", "val", "test")


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def source_hash(path: Path) -> str:
    """Content hash of an input file (memoised per process on path, size and mtime)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"data.path: file not found: {path}") from None
    if path.is_dir():
        raise DataError(f"data.path: {path} is a folder; give a .csv or .parquet file")
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASH_MEMO:
        _HASH_MEMO[memo] = file_sha256(path)
    return _HASH_MEMO[memo]


def stage_key(source_sha: str, cfg: DataConfig) -> str:
    """The stage's cache key: input content, its config section (less the path) and code version."""
    section = cfg.model_dump(mode="json")
    section.pop("path")  # the content hash stands for the file; moving it is no change
    section.pop("datamodule", None)  # how batches are formed is the train stage's business
    return content_key(
        {"stage": "prepare_data", "code": CODE_VERSION, "source": source_sha, "config": section}
    )


def _format(cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    name = cfg.path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(
        f"data.path: cannot tell the format of {cfg.path.name}; "
        "name it .csv or .parquet or set data.format"
    )


def _open(cfg: DataConfig) -> ds.Dataset:
    import pyarrow.dataset as ds  # here: a run whose stages are cached never reads data (0.2 s)

    fmt = _format(cfg)
    try:
        return ds.dataset(str(cfg.path), format=fmt)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"data.path: {cfg.path} is not readable as {fmt}: {err}") from None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


@dataclass
class _Stats:
    n_features: int
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    class_counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: {} for s in SPLITS}
    )
    dropped_nan: int = 0
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    y_sum: float = 0.0  # regression targets of the train split (a model may standardise them)
    y_sumsq: float = 0.0

    def update_train(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x) == 0:
            return
        y64 = y.astype(np.float64)
        self.y_sum += float(y64.sum())
        self.y_sumsq += float((y64 * y64).sum())
        x64 = x.astype(np.float64)
        s, ss = x64.sum(0), (x64 * x64).sum(0)
        lo, hi = x.min(0), x.max(0)
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max = s, ss, lo, hi
        else:
            self.sum += s
            self.sumsq += ss
            self.min = np.minimum(self.min, lo)
            self.max = np.maximum(self.max, hi)


class _Splitter:
    """Seeded, stratified, streaming assignment of rows to splits (see the module docstring)."""

    def __init__(self, fractions: tuple[float, float, float], seed: int) -> None:
        n_train = round(fractions[0] * BLOCK)
        n_val = round(fractions[1] * BLOCK)
        self.cuts = (n_train, n_train + n_val)
        self.seed = seed
        self.seen: dict[int, int] = {}

    def _perm(self, cls: int, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, cls & 0xFFFFFFFF, block])
        rank = rng.permutation(BLOCK)
        return np.where(rank < self.cuts[0], 0, np.where(rank < self.cuts[1], 1, 2)).astype(
            np.int8
        )

    def _split_of_positions(self, cls: int, occ: np.ndarray) -> np.ndarray:
        # occ is a contiguous run of occurrence numbers: blocks first..last, all needed.
        first, last = int(occ[0]) // BLOCK, int(occ[-1]) // BLOCK
        table = np.stack([self._perm(cls, b) for b in range(first, last + 1)])
        return table.reshape(-1)[occ - first * BLOCK]

    def assign(self, classes: np.ndarray) -> np.ndarray:
        out = np.empty(len(classes), dtype=np.int8)
        for c in np.unique(classes):
            idx = np.nonzero(classes == c)[0]
            start = self.seen.get(int(c), 0)
            out[idx] = self._split_of_positions(int(c), np.arange(start, start + len(idx)))
            self.seen[int(c)] = start + len(idx)
        return out


def prepare(cfg: DataConfig, out_root: Path, key: str | None = None) -> DatasetRef:
    """Run the stage without Prefect: validate, split and write into ``out_root / key``.

    Raises DataError (never retried) when the data are unusable. When ``out_root / key`` already
    holds a finished output it is reused as is.
    """
    src_sha = source_hash(cfg.path)
    key = key or stage_key(src_sha, cfg)
    final = out_root / key
    manifest = final / "dataset.json"
    if manifest.exists():
        return DatasetRef.model_validate_json(manifest.read_text())

    dataset = _open(cfg)
    schema = dataset.schema
    if dataset.head(1).num_rows == 0:  # before the type checks: an empty column has no type
        raise DataError(f"data.path: {cfg.path.name} holds no rows")
    names = schema.names
    if cfg.label not in names:
        raise DataError(
            f"data.label: column {cfg.label!r} not in {cfg.path.name} (columns: {_short(names)})"
        )
    features = list(cfg.features) if cfg.features is not None else [
        n for n in names if n != cfg.label
    ]
    if not features:
        raise DataError("data.features: no feature columns (the file has only the label)")
    missing = [f for f in features if f not in names]
    if missing:
        raise DataError(f"data.features: not in {cfg.path.name}: {_short(missing)}")
    if cfg.label in features:
        raise DataError(f"data.features: contains the label column {cfg.label!r}")
    bad_cat = [c for c in cfg.categorical if c not in features]
    if bad_cat:
        raise DataError(f"data.categorical: not among the features: {_short(bad_cat)}")
    non_numeric = [
        f for f in features if f not in cfg.categorical and not _is_numeric(schema.field(f).type)
    ]
    if non_numeric:
        types = ", ".join(f"{f} ({schema.field(f).type})" for f in non_numeric[:5])
        raise DataError(
            f"data.features: not numeric: {types}; declare them in data.categorical or drop them"
        )
    label_type = schema.field(cfg.label).type
    if cfg.task == "regression" and not _is_numeric(label_type):
        raise DataError(f"data.label: {cfg.label!r} must be numeric for regression ({label_type})")
    label_codes: dict[object, int] | None = None
    if cfg.task == "classification" and not pa.types.is_integer(label_type):
        label_codes = {}  # strings (or other) become codes in first-seen order
    cat_codes: dict[str, dict[object, int]] = {c: {} for c in cfg.categorical}

    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        ref = _write(cfg, dataset, features, label_codes, cat_codes, tmp, final, key, src_sha)
        try:
            os.replace(tmp, final)
        except OSError:
            if not manifest.exists():  # another process finished the same key first: fine
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return ref
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _short(items: list[str], n: int = 8) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items)} in all)" if len(items) > n else "")


def _codes(values: pa.Array, table: dict[object, int]) -> np.ndarray:
    for v in pc.unique(values).to_pylist():
        if v is not None and v not in table:
            table[v] = len(table)
    value_set = pa.array(list(table), type=values.type) if table else pa.array([], values.type)
    return pc.index_in(values, value_set=value_set).to_numpy(zero_copy_only=False)


def _write(
    cfg: DataConfig,
    dataset: ds.Dataset,
    features: list[str],
    label_codes: dict[object, int] | None,
    cat_codes: dict[str, dict[object, int]],
    tmp: Path,
    final: Path,
    key: str,
    src_sha: str,
) -> DatasetRef:
    nf = len(features)
    classification = cfg.task == "classification"
    y_type = pa.int64() if classification else pa.float32()
    out_schema = pa.schema([("x", pa.list_(pa.float32(), nf)), ("y", y_type)])
    writers = {
        s: pq.ParquetWriter(tmp / f"{s}.parquet", out_schema, compression="snappy") for s in SPLITS
    }
    splitter = _Splitter((cfg.split.train, cfg.split.val, cfg.split.test), cfg.seed)
    stats = _Stats(nf)
    total = 0
    try:
        scanner = dataset.scanner(columns=[*features, cfg.label], batch_size=cfg.batch_rows)
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            x = np.empty((batch.num_rows, nf), dtype=np.float32)
            for j, name in enumerate(features):
                col = batch.column(name)
                if name in cat_codes:
                    codes = _codes(col, cat_codes[name]).astype(np.float32)
                    codes[~np.isfinite(codes)] = np.nan
                    x[:, j] = codes
                else:
                    x[:, j] = col.to_numpy(zero_copy_only=False)
            lab = batch.column(cfg.label)
            if label_codes is not None:
                y = _codes(lab, label_codes).astype(np.float64)
            else:
                y = lab.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            bad = np.isnan(x).any(1) | np.isnan(y)
            if bad.any():
                n_bad = int(bad.sum())
                if cfg.nan_policy == "error" or np.isnan(y).any() and cfg.nan_policy != "drop":
                    cols = [features[j] for j in np.nonzero(np.isnan(x).any(0))[0]]
                    if np.isnan(y).any():
                        cols.append(cfg.label)
                    raise DataError(
                        f"data: {n_bad} rows near row {total} hold missing values "
                        f"(columns {_short(cols)}); set data.nan_policy to drop or fill_zero"
                    )
                if cfg.nan_policy == "drop":
                    x, y = x[~bad], y[~bad]
                    stats.dropped_nan += n_bad
                else:
                    np.nan_to_num(x, copy=False, nan=0.0)
            total += batch.num_rows
            if classification:
                if (y < 0).any() or (y != np.floor(y)).any():
                    raise DataError(
                        f"data.label: {cfg.label!r} holds negative or fractional classes"
                    )
                yi = y.astype(np.int64)
            else:
                yi = y.astype(np.float32)
            part = splitter.assign(yi if classification else np.zeros(len(yi), dtype=np.int64))
            for s_idx, s in enumerate(SPLITS):
                sel = part == s_idx
                n = int(sel.sum())
                if n == 0:
                    continue
                xs = np.ascontiguousarray(x[sel])
                xcol = pa.FixedSizeListArray.from_arrays(pa.array(xs.reshape(-1)), nf)
                writers[s].write_table(pa.table({"x": xcol, "y": pa.array(yi[sel], y_type)}))
                stats.rows[s] += n
                if classification:
                    cc = stats.class_counts[s]
                    for c, k in zip(*np.unique(yi[sel], return_counts=True)):
                        cc[str(int(c))] = cc.get(str(int(c)), 0) + int(k)
                if s == "train":
                    stats.update_train(xs, yi[sel])
    finally:
        for w in writers.values():
            w.close()

    kept = sum(stats.rows.values())
    if total == 0:
        raise DataError(f"data.path: {cfg.path.name} holds no rows")
    if kept == 0:
        raise DataError("data: every row held missing values and was dropped (data.nan_policy)")
    for s in ("train", "test"):
        if stats.rows[s] == 0:
            raise DataError(f"data.split.{s}: the {s} split is empty ({kept} rows in all)")

    num_classes = None
    if classification:
        seen = {int(c) for s in SPLITS for c in stats.class_counts[s]}
        num_classes = len(label_codes) if label_codes is not None else max(seen) + 1
    splits = {}
    for s in SPLITS:
        p = tmp / f"{s}.parquet"
        splits[s] = SplitRef(path=final / p.name, rows=stats.rows[s], sha256=file_sha256(p))
    content = hashlib.sha256(
        json.dumps({s: splits[s].sha256 for s in SPLITS}, sort_keys=True).encode()
    ).hexdigest()
    n = max(stats.rows["train"], 1)
    mean = stats.sum / n if stats.sum is not None else np.zeros(nf)
    var = np.maximum(stats.sumsq / n - mean * mean, 0) if stats.sumsq is not None else mean
    y_mean = stats.y_sum / n
    target = None if classification else {
        "mean": y_mean, "std": float(np.sqrt(max(stats.y_sumsq / n - y_mean * y_mean, 0.0)))
    }
    summary = {
        "source": str(cfg.path),
        "source_sha256": src_sha,
        "rows_read": total,
        "rows_dropped_nan": stats.dropped_nan,
        "rows": stats.rows,
        "class_counts": stats.class_counts if classification else None,
        "classes": [str(k) for k in label_codes] if label_codes is not None else None,
        "categorical_codes": {c: [str(k) for k in m] for c, m in cat_codes.items()},
        "target": target,  # regression: mean and std of the train split's target
        "features": {
            f: {
                "mean": float(mean[j]),
                "std": float(np.sqrt(var[j])),
                "min": float(stats.min[j]) if stats.min is not None else None,
                "max": float(stats.max[j]) if stats.max is not None else None,
            }
            for j, f in enumerate(features)
        },
    }
    (tmp / "stats.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    src = dataset.schema
    write_schema(
        build_schema(
            cfg.task, cfg.label, str(src.field(cfg.label).type), features,
            {f: str(src.field(f).type) for f in features}, label_codes, cat_codes, num_classes,
        ),
        tmp,
    )
    ref = DatasetRef(
        root=final,
        splits=splits,
        content_hash=content,
        features=features,
        label=cfg.label,
        task=cfg.task,
        num_classes=num_classes,
        source=str(cfg.path),
        source_hash=src_sha,
        stats_path=final / "stats.json",
        schema_path=final / "schema.json",
        cache_key=key,
        code_version=CODE_VERSION,
    )
    (tmp / "dataset.json").write_text(ref.model_dump_json(indent=1))  # last: marks it finished
    return ref


def load_split(ref: DatasetRef, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split as (x float32 [n, f], y) numpy arrays, viewing Arrow's buffers where it can."""
    table = pq.read_table(ref.splits[split].path)
    xcol = table.column("x").combine_chunks()
    x = xcol.flatten().to_numpy().reshape(len(xcol), len(ref.features))
    y = table.column("y").combine_chunks().to_numpy()
    return x, y


def _cache_key(context: object, params: dict) -> str:
    cfg: DataConfig = params["cfg"]
    return "prepare_data-" + stage_key(source_hash(cfg.path), cfg)


@task(name="prepare_data", cache_key_fn=_cache_key, persist_result=True)
def prepare_data(cfg: DataConfig, home: str) -> DatasetRef:
    """Prefect task: validate, split and write the data; returns a content-hashed DatasetRef."""
    from tasks.settings import stage_dir

    return prepare(cfg, stage_dir("prepare_data", Path(home)))
