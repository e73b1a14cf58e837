"""Inference by column name: the one implementation behind ``trainflow predict`` and the served
MLflow model (tasks/pyfunc_model.py).

A :class:`Predictor` holds an ONNX session and the dataset schema (tasks/schema.py). It takes
rows with named columns in any order, refuses a missing or unknown column by name, turns
category strings into the codes the model was trained on, runs the model, and answers in the
user's own terms: class labels (not codes) for classification, values for regression, and per
class probabilities on request.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.schema import SCHEMA_FILE, read_schema

ONNX_FILE = "model.onnx"
PREDICTION = "prediction"


class InputError(ValueError):
    """The rows given to predict do not fit the model's schema; the message names the column."""


class Predictor:
    """An ONNX model plus its schema: named rows in, labels or values out."""

    def __init__(self, onnx_path: str | os.PathLike[str], schema: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.schema = schema
        self.features: list[str] = [f["name"] for f in schema["features"]]
        self.classes: list[Any] | None = schema["classes"]
        self.label: str = schema["label"]
        self.version: str | None = None
        # code lookup per categorical feature (the values as trained, e.g. "red" -> 0)
        self._codes = {
            f["name"]: {v: i for i, v in enumerate(f["categories"])}
            for f in schema["features"]
            if f.get("categories") is not None
        }
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        meta = self.session.get_inputs()[0]
        self._input_name = meta.name
        # an image model takes [n, 1, 8, 8] where the table has 64 columns: reshape the rows
        dims = meta.shape[1:]
        static = all(isinstance(d, int) for d in dims)
        self._row_shape = tuple(dims) if static and len(dims) > 1 else None
        if self._row_shape is not None and int(np.prod(self._row_shape)) != len(self.features):
            raise InputError(
                f"model input {meta.name} takes rows of shape {self._row_shape}, the schema has "
                f"{len(self.features)} features"
            )

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> Predictor:
        """A Predictor from a folder holding ``model.onnx`` and ``schema.json``."""
        folder = Path(folder)
        return cls(folder / ONNX_FILE, read_schema(folder / SCHEMA_FILE))

    @classmethod
    def from_registry(
        cls, name: str, alias: str = "champion", tracking_uri: str | None = None
    ) -> Predictor:
        """The registered version behind ``models:/name@alias`` (from the registry alone)."""
        from tasks.registry import RegistryError, download_version

        with tempfile.TemporaryDirectory(prefix="trainflow-predict-") as tmp:
            local, mv = download_version(name, alias, tracking_uri, tmp)
            artifacts = local / "artifacts"
            if not (artifacts / SCHEMA_FILE).is_file():
                raise RegistryError(
                    f"{name} version {mv.version} holds no {SCHEMA_FILE} (registered before "
                    "predict-by-name): run the pipeline again to register a version with it"
                )
            predictor = cls.from_folder(artifacts)
        predictor.version = str(mv.version)
        return predictor

    # ----------------------------------------------------------------------------- inputs

    def check_columns(self, columns: list[str]) -> None:
        """Refuse a missing feature column or an unknown one (the label column may be there)."""
        have = set(columns)
        missing = [f for f in self.features if f not in have]
        known = {*self.features, self.label}
        extra = [c for c in columns if c not in known]
        if missing:
            raise InputError(
                f"column {missing[0]!r} is missing (the model takes: {_short(self.features)})"
                + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else "")
                + (f"; the input has {_short(extra)} that it does not take" if extra else "")
            )
        if extra:
            raise InputError(
                f"column {extra[0]!r} is not a feature of this model (it takes: "
                f"{_short(self.features)}); drop it or rename it"
            )

    def encode(self, frame: Any) -> np.ndarray:
        """The model's input matrix (float32, features in training order) from named columns."""
        import pandas as pd

        n = len(frame)
        x = np.empty((n, len(self.features)), dtype=np.float32)
        for j, name in enumerate(self.features):
            col = frame[name]
            if name in self._codes:
                table = self._codes[name]
                if all(isinstance(k, str) for k in table):
                    col = col.map(lambda v: v if v is None or isinstance(v, str) else str(v))
                # an unknown or missing category is NaN, as prepare_data codes it
                x[:, j] = pd.to_numeric(col.map(table), errors="coerce").to_numpy(np.float32)
                continue
            values = pd.to_numeric(col, errors="coerce")
            bad = values.isna() & col.notna()
            if bad.any():
                raise InputError(
                    f"column {name!r}: not numeric (row {int(np.argmax(bad.to_numpy()))}: "
                    f"{col[bad].iloc[0]!r}); the model takes numbers there"
                )
            if values.isna().any():
                raise InputError(
                    f"column {name!r}: {int(values.isna().sum())} missing values; fill them in"
                )
            x[:, j] = values.to_numpy(np.float32)
        return x

    # ----------------------------------------------------------------------------- outputs

    def predict(self, frame: Any, probabilities: bool = False) -> Any:
        """A DataFrame with ``prediction`` (labels or values) and, on request, one probability
        column per class, named after the class. ``frame`` is a pandas DataFrame."""
        import pandas as pd

        self.check_columns([str(c) for c in frame.columns])
        x = self.encode(frame.reset_index(drop=True))
        if self._row_shape is not None:
            x = x.reshape(len(x), *self._row_shape)
        out = np.asarray(self.session.run(None, {self._input_name: x})[0])
        if self.schema["task"] == "regression":
            if out.ndim > 1 and out.shape[1] != 1:
                raise InputError(f"regression model answered {out.shape[1]} values per row")
            if probabilities:
                raise InputError("--probabilities: a regression model has no classes")
            return pd.DataFrame({PREDICTION: out.reshape(len(x)).astype(np.float64)})
        classes = self.classes or []
        if out.ndim != 2 or out.shape[1] != len(classes):
            raise InputError(
                f"the model answered shape {tuple(out.shape)}, the schema has {len(classes)} "
                "classes"
            )
        codes = out.argmax(1)
        result = pd.DataFrame({PREDICTION: pd.Series([classes[c] for c in codes], dtype=object)})
        if all(isinstance(c, int) for c in classes):
            result[PREDICTION] = result[PREDICTION].astype(np.int64)
        if probabilities:
            z = out.astype(np.float64) - out.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            for i, c in enumerate(classes):
                result[str(c)] = p[:, i]
        return result


def read_batches(path: Path, columns: list[str], batch_rows: int) -> Iterator[Any]:
    """The input file (CSV or parquet) as pandas DataFrames of ``columns``, batch by batch."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    fmt = "csv" if path.name.lower().endswith((".csv", ".csv.gz")) else "parquet"
    try:
        dataset = ds.dataset(str(path), format=fmt)
        for batch in dataset.scanner(columns=columns, batch_size=batch_rows).to_batches():
            if batch.num_rows:
                yield batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"--input {path}: not readable as {fmt}: {err}") from None


def input_columns(path: Path) -> list[str]:
    """The column names of a CSV or parquet file."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    fmt = "csv" if path.name.lower().endswith((".csv", ".csv.gz")) else "parquet"
    try:
        return list(ds.dataset(str(path), format=fmt).schema.names)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"--input {path}: not readable as {fmt}: {err}") from None


def predict_file(
    predictor: Predictor,
    input_path: Path,
    output_path: Path,
    probabilities: bool = False,
    batch_rows: int = 65536,
) -> int:
    """Predict every row of ``input_path`` into ``output_path`` (parquet, or CSV by its name).

    The output appears whole or not at all (written beside it, then renamed). Returns the rows.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not input_path.is_file():
        raise InputError(f"--input {input_path}: not found")
    columns = input_columns(input_path)
    predictor.check_columns(columns)
    from trainer.fileio import atomic_write

    as_csv = output_path.name.lower().endswith(".csv")
    writer = None
    n = 0
    with atomic_write(output_path) as sink:  # an error leaves output_path as it was
        try:
            for frame in read_batches(input_path, predictor.features, batch_rows):
                table = pa.Table.from_pandas(
                    predictor.predict(frame, probabilities), preserve_index=False
                )
                if writer is None:
                    writer = (pcsv.CSVWriter if as_csv else pq.ParquetWriter)(sink, table.schema)
                writer.write_table(table)
                n += table.num_rows
            if writer is None:
                raise InputError(f"--input {input_path}: holds no rows")
        finally:
            if writer is not None:
                writer.close()  # the footer; the sink stays open for atomic_write to finish
    return n


def _short(items: list[str], n: int = 8) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items)} in all)" if len(items) > n else "")
