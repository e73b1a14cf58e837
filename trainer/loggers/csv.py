"""CSVLogger: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``, no dependencies.

Files live in ``<save_dir>/<name>/version_<N>/`` (N: the next free number unless ``version`` is
given). Rows are buffered in memory and written at :meth:`save` (the Trainer calls it at each
epoch end) and :meth:`finalize`. When a row brings a new column, the whole file is rewritten with
the wider header into a temporary file that then replaces the old one, so a reader never sees a
half-written header; otherwise rows are appended.
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Any

import yaml

from trainer.fileio import atomic_write_text
from trainer.loggers.base import Logger, rank_zero_only

__all__ = ["CSVLogger"]


def _plain(value: Any) -> Any:
    """A YAML-safe version of a hyperparameter value."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return repr(value)


class CSVLogger(Logger):
    """Log metrics to a CSV file and hyperparameters to YAML.

    Args:
        save_dir: root directory.
        name: experiment name (a sub-directory); ``""`` or None: no sub-directory.
        version: int → ``version_<N>``; str → that directory name; None → next free number.
        flush_logs_every_n_steps: also write buffered rows once this many are pending.
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "trainflow_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self.flush_logs_every_n_steps = int(flush_logs_every_n_steps)
        self.hparams: dict[str, Any] = {}
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []  # what the file on disk has
        self._loaded = False

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def save_dir(self) -> str:  # type: ignore[override]
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def version(self) -> int | str:  # type: ignore[override]
        if self._version is None:
            self._version = self._next_version()
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version
        folder = version if isinstance(version, str) else f"version_{version}"
        return os.path.join(self.root_dir, folder)

    @property
    def metrics_file_path(self) -> str:
        return os.path.join(self.log_dir, self.METRICS_FILE)

    def _next_version(self) -> int:
        try:
            entries = os.listdir(self.root_dir)
        except FileNotFoundError:
            return 0
        numbers = [
            int(m.group(1))
            for e in entries
            if (m := re.fullmatch(r"version_(\d+)", e))
            and os.path.isdir(os.path.join(self.root_dir, e))
        ]
        return max(numbers) + 1 if numbers else 0

    # ------------------------------------------------------------------ logging
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Any) -> None:
        if not isinstance(params, dict):
            params = vars(params)
        self.hparams.update(params)
        os.makedirs(self.log_dir, exist_ok=True)
        text = yaml.safe_dump(_plain(self.hparams), sort_keys=False)
        atomic_write_text(os.path.join(self.log_dir, self.HPARAMS_FILE), text)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {}
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            if key == "epoch" and isinstance(value, float) and value.is_integer():
                value = int(value)  # the Trainer sends floats; an epoch reads better as 3
            row[key] = value
        if step is not None:
            row["step"] = int(step)
        self._rows.append(row)
        if self.flush_logs_every_n_steps > 0 and len(self._rows) >= self.flush_logs_every_n_steps:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write buffered rows to ``metrics.csv`` (append, or rewrite when columns grow)."""
        if not self._rows:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        path = self.metrics_file_path
        if not self._loaded:
            self._load_header(path)
        new_keys = [k for row in self._rows for k in row if k not in self._columns]
        if new_keys or not os.path.exists(path):
            old_rows = self._read_rows(path)
            columns = list(self._columns)
            for k in new_keys:
                if k not in columns:
                    columns.append(k)
            if "step" in columns:  # step first, then in order of appearance
                columns.remove("step")
                columns.insert(0, "step")
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(old_rows)
            writer.writerows(self._rows)
            atomic_write_text(path, buf.getvalue())
            self._columns = columns
        else:
            with open(path, "a", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns, lineterminator="\n")
                writer.writerows(self._rows)
                f.flush()
        self._rows = []

    def _load_header(self, path: str) -> None:
        self._loaded = True
        if os.path.exists(path):  # a resumed run continues its own file
            with open(path, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f), None)
            self._columns = list(header or [])

    def _read_rows(self, path: str) -> list[dict[str, Any]]:
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Nothing to do: checkpoints already sit under ``log_dir/checkpoints`` by default."""

    @rank_zero_only
    def finalize(self, status: str, error: BaseException | None = None) -> None:
        self.save()
