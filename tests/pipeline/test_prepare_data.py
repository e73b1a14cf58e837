"""prepare_data without Prefect: validation, deterministic stratified split, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tasks.config import DataConfig
from tasks.prepare_data import load_split, prepare
from tasks.types import DataError

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "data" / "digits.parquet"


def test_digits_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    cfg = DataConfig(path=DIGITS)
    a = prepare(cfg, tmp_path / "a")
    b = prepare(cfg, tmp_path / "b")
    assert a.content_hash == b.content_hash
    for s in ("train", "val", "test"):
        assert a.splits[s].path.read_bytes() == b.splits[s].path.read_bytes()
    assert sum(r.rows for r in a.splits.values()) == 1797
    assert a.num_classes == 10 and len(a.features) == 64
    stats = json.loads(a.stats_path.read_text())
    for s, frac in (("train", 0.7), ("test", 0.15)):
        counts = stats["class_counts"][s]
        assert len(counts) == 10
        total = {c: sum(stats["class_counts"][k].get(c, 0) for k in ("train", "val", "test"))
                 for c in counts}
        for c, n in counts.items():  # stratified: every class near its fraction
            assert abs(n / total[c] - frac) < 0.05, (s, c, n, total[c])
    x, y = load_split(a, "train")
    assert x.shape == (a.splits["train"].rows, 64) and x.dtype == np.float32
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))


def test_other_seed_other_split(tmp_path: Path) -> None:
    a = prepare(DataConfig(path=DIGITS, seed=1), tmp_path / "a")
    b = prepare(DataConfig(path=DIGITS, seed=2), tmp_path / "b")
    assert a.content_hash != b.content_hash


def test_batches_do_not_change_the_result(tmp_path: Path) -> None:
    a = prepare(DataConfig(path=DIGITS), tmp_path / "a")
    b = prepare(DataConfig(path=DIGITS, batch_rows=37), tmp_path / "b")
    xa, ya = load_split(a, "test")
    xb, yb = load_split(b, "test")
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def _csv(tmp_path: Path, cols: dict) -> Path:
    p = tmp_path / "in.csv"
    pacsv.write_csv(pa.table(cols), p)
    return p


def test_csv_with_string_labels_and_categorical(tmp_path: Path) -> None:
    n = 300
    rng = np.random.default_rng(0)
    p = _csv(tmp_path, {
        "a": rng.normal(size=n), "colour": rng.choice(["red", "blue"], n),
        "kind": rng.choice(["cat", "dog", "eel"], n),
    })
    ref = prepare(DataConfig(path=p, label="kind", categorical=["colour"]), tmp_path / "out")
    assert ref.num_classes == 3 and ref.features == ["a", "colour"]
    x, _ = load_split(ref, "train")
    assert set(np.unique(x[:, 1])) <= {0.0, 1.0}
    stats = json.loads(ref.stats_path.read_text())
    assert sorted(stats["classes"]) == ["cat", "dog", "eel"]


def test_regression(tmp_path: Path) -> None:
    p = _csv(tmp_path, {"a": np.arange(50.0), "t": np.arange(50.0) * 2})
    ref = prepare(DataConfig(path=p, label="t", task="regression"), tmp_path / "out")
    _, y = load_split(ref, "train")
    assert y.dtype == np.float32 and ref.num_classes is None


@pytest.mark.parametrize(
    ("cols", "kw", "message"),
    [
        ({"a": [1.0, 2.0]}, {}, "data.label: column 'label' not in in.csv (columns: a)"),
        ({"a": ["x", "y"], "label": [0, 1]}, {},
         "data.features: not numeric: a (string); declare them in data.categorical"),
        ({"a": [1.0], "label": [0]}, {"features": ["b"]}, "data.features: not in in.csv: b"),
        ({"a": [1.0, None, 3.0], "label": [0, 1, 0]}, {},
         "data: 1 rows near row 0 hold missing values (columns a); set data.nan_policy"),
        ({"a": [1.0, 2.0], "label": [0, -1]}, {}, "negative or fractional classes"),
        ({"label": [0, 1]}, {}, "data.features: no feature columns"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path: Path, cols: dict, kw: dict, message: str) -> None:
    with pytest.raises(DataError) as err:
        prepare(DataConfig(path=_csv(tmp_path, cols), **kw), tmp_path / "out")
    assert message in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path: file not found"):
        prepare(DataConfig(path=tmp_path / "none.parquet"), tmp_path / "out")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64()), "label": pa.array([], pa.int64())}),
                   empty)
    with pytest.raises(DataError, match="holds no rows"):
        prepare(DataConfig(path=empty), tmp_path / "out")


def test_nan_policies(tmp_path: Path) -> None:
    a = np.arange(200.0)
    a[[5, 150]] = np.nan
    p = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"a": a, "label": np.arange(200) % 2}), p)
    dropped = prepare(DataConfig(path=p, nan_policy="drop"), tmp_path / "d")
    assert sum(s.rows for s in dropped.splits.values()) == 198
    filled = prepare(DataConfig(path=p, nan_policy="fill_zero"), tmp_path / "f")
    assert sum(s.rows for s in filled.splits.values()) == 200


def test_failure_late_in_the_stream_leaves_nothing_half_written(tmp_path: Path) -> None:
    a = np.arange(1000.0)
    a[900] = np.nan  # in the 10th batch of 100: nine batches were already written
    p = tmp_path / "late.parquet"
    pq.write_table(pa.table({"a": a, "label": np.arange(1000) % 3}), p)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="near row 900"):
        prepare(DataConfig(path=p, batch_rows=100), out)
    assert list(out.iterdir()) == []  # no final folder, no temp folder


def test_finished_output_is_reused(tmp_path: Path) -> None:
    cfg = DataConfig(path=DIGITS)
    a = prepare(cfg, tmp_path)
    mtime = a.splits["train"].path.stat().st_mtime_ns
    b = prepare(cfg, tmp_path)
    assert a == b and b.splits["train"].path.stat().st_mtime_ns == mtime
