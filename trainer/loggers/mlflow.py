"""MLflowLogger: hyperparameters, metrics, checkpoints and plots into an MLflow run.

Metrics: the training thread only appends ``(time, step, metrics)`` to an in-memory buffer; the
per-step values stay 0-d tensors (``accepts_tensors``: no ``.item()`` per step, no device sync)
and are converted when written, those on an accelerator many at once (one ``torch.cat``, one
``tolist``). Writing is ``MlflowClient.log_batch`` (1000 metrics per call, MLflow's maximum);
``epoch`` is written only where its value starts and ends (the Trainer repeats it on every
step). Where the writes run is ``writer``: ``"thread"`` hands the rows through a bounded queue
to a writer thread and does not wait for them (a commit into the embedded SQLite store waits
for the disk, 10-35 ms, at every epoch end), ``"inline"`` writes them on the calling thread.
``save()`` (every epoch end) hands the buffered rows over; ``flush()`` and ``finalize()`` wait
until they are in the store. Every way a fit ends goes through ``finalize()`` (the Trainer
calls it on success, on an exception and on KeyboardInterrupt), pickling flushes, and a logger
dropped or left at interpreter exit stops its thread after what it was handed. A write error is
reported at the next ``save()``, ``flush()`` or ``finalize()``, on the training thread. The
client, the thread and the queue are created lazily and dropped when pickled (the Trainer is
pickled to DDP workers); the run is created before pickling so the workers and the caller share
one run.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trainer.loggers.base import Logger, global_rank

__all__ = ["MLflowLogger", "flatten_params"]

log = logging.getLogger(__name__)

_STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_MAX_PARAMS = 100  # MLflow: params per log_batch call
_MAX_METRICS = 1000  # MLflow: metrics per log_batch call
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_KEY_LEN = 250
_HISTORY_CAP = 20_000  # points kept per metric for the plots (decimated beyond)
_QUEUE_SIZE = 4  # row batches waiting for the writer thread (then log_metrics/save block)


def _sanitize_key(key: str) -> str:
    clean = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    return clean[:_MAX_KEY_LEN]


def flatten_params(params: Any, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten nested mappings / dataclasses / namespaces / lists into ``a.b.c -> str`` params."""
    import dataclasses

    out: dict[str, str] = {}
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    elif hasattr(params, "model_dump"):  # pydantic v2
        params = params.model_dump()
    elif hasattr(params, "__dict__") and not isinstance(params, Mapping | str | bytes):
        params = vars(params)
    if isinstance(params, Mapping):
        if not params and prefix:
            out[prefix] = "{}"
        for k, v in params.items():
            key = f"{prefix}{sep}{k}" if prefix else str(k)
            if isinstance(v, Mapping) or dataclasses.is_dataclass(v) or hasattr(v, "model_dump"):
                out.update(flatten_params(v, key, sep))
            else:
                out[key] = _param_str(v)
        return out
    out[prefix or "value"] = _param_str(params)
    return out


def _param_str(value: Any) -> str:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    text = str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."


class MLflowLogger(Logger):
    """Log a fit into MLflow (embedded SQLite store by default).

    Args:
        experiment_name: MLflow experiment (created when missing, artifacts beside a SQLite store).
        run_name: display name of a new run.
        tracking_uri: MLflow tracking URI; None: ``$MLFLOW_TRACKING_URI``, else the embedded
            ``sqlite:///<project>/.trainflow/mlflow.db``.
        tags: run tags.
        run_id: resume into this existing run instead of creating one.
        log_checkpoints: ``True``: ModelCheckpoint's best and last files at the end of the run;
            ``"all"``: every saved checkpoint, when saved; ``False``: none.
        log_plots: draw metric curves (and keep the points for them) at the end of the run.
        max_buffered_rows: ``log_metrics`` calls kept in memory between epoch ends; when full,
            they are handed to the writer at once (no metric is dropped).
        writer: ``"thread"``: a writer thread does the ``log_batch`` calls, fed through a
            bounded queue, and ``save()`` does not wait for them; ``"inline"``: they run on
            the thread that calls ``save()``.
    """

    accepts_tensors = True

    def __init__(
        self,
        experiment_name: str = "trainflow",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        log_checkpoints: bool | str = True,
        log_plots: bool = True,
        max_buffered_rows: int = 100_000,
        writer: str = "thread",
    ) -> None:
        if log_checkpoints not in (True, False, "all"):
            raise ValueError(
                "MLflowLogger.log_checkpoints: must be True, False or 'all' "
                f"(got {log_checkpoints!r})"
            )
        if max_buffered_rows < 1:
            raise ValueError(
                f"MLflowLogger.max_buffered_rows: must be >= 1 (got {max_buffered_rows})"
            )
        if writer not in ("thread", "inline"):
            raise ValueError(f"MLflowLogger.writer: must be 'thread' or 'inline' (got {writer!r})")
        self.writer = writer
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri_arg = tracking_uri
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._run_id = run_id
        self._resume = run_id is not None
        self.log_checkpoints = log_checkpoints
        self.log_plots = log_plots
        self.max_buffered_rows = max_buffered_rows
        self._tracking_uri: str | None = None
        self._experiment_id: str | None = None
        self._best_path: str | None = None
        self._best_score: float | None = None
        self._last_path: str | None = None
        self._finalized = False
        self._init_runtime()

    # ------------------------------------------------------------------ lifecycle / pickling

    def _init_runtime(self) -> None:
        self._client: Any = None
        self._rank: int | None = None  # read from the environment on the first log_metrics
        self._rows: list[tuple[float, int, dict[str, Any]]] = []
        self._keymap: dict[str, str] = {}
        self._history: dict[str, list[tuple[int, float, float | None]]] = {}
        self._last_epoch: list[float | None] = [None]  # the last epoch value written
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        self._errors: list[tuple[int, BaseException]] = []  # failed writes, not yet reported

    _RUNTIME = (
        "_client",
        "_rank",
        "_rows",
        "_keymap",
        "_history",
        "_last_epoch",
        "_queue",
        "_thread",
        "_errors",
    )

    def __getstate__(self) -> dict[str, Any]:
        if global_rank() == 0 and not self._finalized:
            self._ensure_run()  # one run shared by the caller and the DDP workers
            self._flush()
            self._stop_writer()
        state = self.__dict__.copy()
        for key in self._RUNTIME:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._run_id is not None:
            self._resume = True
        self._init_runtime()

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:  # type: ignore[override]
        """The experiment name."""
        return self._experiment_name

    @property
    def version(self) -> str | None:  # type: ignore[override]
        """The run id (the run is created on first access, on rank zero)."""
        if global_rank() == 0:
            self._ensure_run()
        return self._run_id

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (creates the run on rank zero when needed)."""
        return self.version

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment id (after the run exists)."""
        if global_rank() == 0:
            self._ensure_run()
        return self._experiment_id

    @property
    def tracking_uri(self) -> str:
        """The resolved tracking URI."""
        if self._tracking_uri is None:
            from trainer.loggers.mlflow_store import resolve_tracking_uri

            self._tracking_uri = resolve_tracking_uri(self._tracking_uri_arg)
        return self._tracking_uri

    @property
    def experiment(self) -> Any:
        """The ``MlflowClient`` (Lightning's name for it)."""
        self._ensure_run()
        return self._client

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` bound to this logger's tracking URI."""
        return self.experiment

    # ------------------------------------------------------------------ setup

    def check(self) -> str:
        """Fail fast (``TrackingUnreachable``) if the tracking store cannot be used; returns the
        URI. Called on the first log; call it yourself before a long setup."""
        from trainer.loggers.mlflow_store import check_reachable

        self._tracking_uri = check_reachable(self.tracking_uri)
        return self._tracking_uri

    def _ensure_run(self) -> None:
        if self._client is not None:
            return
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from trainer.loggers.mlflow_store import get_or_create_experiment

        uri = self.check()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        if self._run_id is not None:
            try:
                run = client.get_run(self._run_id)
            except MlflowException:
                raise ValueError(
                    f"MLflowLogger.run_id: no run {self._run_id!r} in {uri}: pass an "
                    "existing run id or None to start a new run"
                ) from None
            self._experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                client.update_run(self._run_id, status="RUNNING")
            if self._tags:
                self._log_tags(client, self._tags)
        else:
            self._experiment_id = get_or_create_experiment(client, self._experiment_name, uri)
            tags = dict(self._tags)
            tags.setdefault("trainflow.logger", "MLflowLogger")
            run = client.create_run(self._experiment_id, run_name=self._run_name, tags=tags)
            self._run_id = run.info.run_id
        self._client = client

    def _log_tags(self, client: Any, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(_sanitize_key(k), str(v)[:_MAX_TAG_LEN]) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            client.log_batch(self._run_id, tags=items[i : i + _MAX_PARAMS])

    # ------------------------------------------------------------------ Logger API

    def log_hyperparams(self, params: Any) -> None:
        """Log flattened hyperparameters, at most 100 per ``log_batch`` call.

        Already-logged params with the same value are skipped (resume); a changed value keeps
        the first one (MLflow params are immutable) and is reported in a warning.
        """
        if global_rank() != 0:
            return
        self._ensure_run()
        flat = {_sanitize_key(k): v for k, v in flatten_params(params).items()}
        existing = self._client.get_run(self._run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if changed:
            log.warning(
                "MLflowLogger: params %s already logged with other values in run %s; kept the "
                "first values (MLflow params cannot change)",
                changed[:10],
                self._run_id,
            )
        write_params(self._client, self._run_id,
                     {k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values at ``step`` (written at the next epoch end; no I/O here)."""
        rank = self._rank
        if rank is None:  # the first call: fail fast on a bad store or run id, not at epoch end
            rank = self._rank = global_rank()
            if rank == 0:
                self._ensure_run()
        if rank != 0:
            return
        rows = self._rows
        # a copy of the dict (the caller may reuse it); tensors are converted when written
        rows.append((time.time(), step, dict(metrics)))
        if len(rows) >= self.max_buffered_rows:
            self._flush(wait=False)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Remember ModelCheckpoint's best and last files (logged at the end, or now for 'all')."""
        if global_rank() != 0 or not self.log_checkpoints:
            return
        best = getattr(checkpoint_callback, "best_model_path", None) or None
        last = getattr(checkpoint_callback, "last_model_path", None) or None
        score = getattr(checkpoint_callback, "best_model_score", None)
        if best:
            self._best_path = str(best)
        if last:
            self._last_path = str(last)
        if score is not None:
            try:
                self._best_score = float(score)
            except (TypeError, ValueError):
                pass
        if self.log_checkpoints == "all":
            for path in {best, last} - {None}:
                if Path(path).is_file():
                    self.log_artifact(path, "checkpoints")

    def save(self) -> None:
        """Hand the buffered metric rows to the writer (``log_batch``, 1000 metrics per call)
        without waiting for the store (``writer="inline"``: written when this returns); a
        failed write reported by then is reported here."""
        if global_rank() == 0 and (self._rows or self._errors):
            self._flush(wait=self.writer == "inline")

    def flush(self) -> None:
        """Wait until every metric row logged so far is in the store; report failed writes."""
        if global_rank() == 0 and (self._rows or self._queue is not None or self._errors):
            self._flush()

    def finalize(self, status: str = "success", error: BaseException | None = None) -> None:
        """Flush, log checkpoints and plots, and end the run FINISHED / FAILED / KILLED.

        ``status``: "success", "failed" or "interrupted"; ``error`` goes into the tags
        ``error`` and ``error_type``. Safe to call twice.
        """
        if global_rank() != 0:
            return
        if status not in _STATUS:
            raise ValueError(
                f"MLflowLogger.finalize: status must be one of {sorted(_STATUS)} (got {status!r})"
            )
        self._ensure_run()
        self._flush()
        self._stop_writer()
        client = self._client
        try:
            if error is not None:
                message = f"{type(error).__name__}: {error}"
                self._log_tags(
                    client, {"error": message[:_MAX_TAG_LEN], "error_type": type(error).__name__}
                )
            self._log_final_checkpoints()
            if self.log_plots:
                self._log_curves()
        except Exception as exc:  # noqa: BLE001 - the run must still be closed
            log.warning("MLflowLogger: could not log final artifacts: %s", exc)
        finally:
            client.set_terminated(self._run_id, status=_STATUS[status])
            self._finalized = True

    # ------------------------------------------------------------------ extra helpers

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Log a file into the run now (synchronously)."""
        if global_rank() != 0:
            return
        self._ensure_run()
        self._client.log_artifact(self._run_id, str(local_path), artifact_path)

    def log_confusion_matrix(
        self,
        matrix: Any,
        class_names: Iterable[str] | None = None,
        artifact_file: str = "plots/confusion_matrix.png",
        normalize: bool = False,
        title: str = "Confusion matrix",
    ) -> None:
        """Draw ``matrix`` (rows true, columns predicted) and log it as a PNG artifact."""
        if global_rank() != 0:
            return
        from trainer.loggers.plots import plot_confusion_matrix

        folder, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_confusion_matrix(
                matrix,
                Path(tmp) / name,
                class_names=list(class_names) if class_names is not None else None,
                normalize=normalize,
                title=title,
            )
            self.log_artifact(png, folder or None)

    # ------------------------------------------------------------------ internals

    def _flush(self, wait: bool = True) -> None:
        """Hand the buffered rows to the writer; ``wait``: until written. Then report the
        errors known by now (those of writes still queued come at a later flush)."""
        rows, self._rows = self._rows, []
        if rows:
            self._ensure_run()
            if self.writer == "inline":
                self._write(rows)
            else:
                if self._thread is None:
                    self._start_writer()
                assert self._queue is not None
                self._queue.put(rows)  # blocks while the queue is full (bounded memory)
        if wait and self._queue is not None:
            self._queue.join()
        self._report_errors()

    def _start_writer(self) -> None:
        # The thread gets what it writes with, not the logger: a logger dropped without
        # finalize() is garbage-collected, and its finalizer stops the thread.
        q: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_SIZE)
        args = (q, self._write_args(), self._errors)
        self._queue = q
        self._thread = threading.Thread(
            target=_writer_loop, args=args, name="MLflowLogger-writer", daemon=True
        )
        self._thread.start()
        # Also run at interpreter exit: what the thread was handed is written before it ends.
        weakref.finalize(self, _stop_writer_thread, q, self._thread)

    def _stop_writer(self) -> None:
        """Stop the writer thread after what is queued (none is held while pickled)."""
        q, thread = self._queue, self._thread
        self._queue = self._thread = None
        if thread is not None and q is not None:
            q.put(None)
            thread.join()
        self._report_errors()

    def _write_args(self) -> tuple[Any, ...]:
        history = self._history if self.log_plots else None
        return (self._client, self._run_id, self._keymap, history, self._last_epoch)

    def _write(self, rows: list[tuple[float, int, dict[str, Any]]]) -> None:
        """Send rows on this thread; a failure is kept for the next flush."""
        _write_or_keep_error(rows, self._write_args(), self._errors)

    def _report_errors(self) -> None:
        """Warn, on the calling (training) thread, about writes that failed since last time."""
        errors = self._errors[:]  # the same list object stays shared with the writer thread
        del self._errors[: len(errors)]
        for n, exc in errors:
            log.warning(
                "MLflowLogger: writing %d metric row(s) to run %s failed: %s: %s",
                n,
                self._run_id,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
            )

    def _log_final_checkpoints(self) -> None:
        if not self.log_checkpoints:
            return
        tags: dict[str, str] = {}
        for kind, path in (("best", self._best_path), ("last", self._last_path)):
            if path and Path(path).is_file():
                self._client.log_artifact(self._run_id, path, f"checkpoints/{kind}")
                tags[f"checkpoint.{kind}"] = f"checkpoints/{kind}/{Path(path).name}"
        if self._best_score is not None:
            tags["checkpoint.best_score"] = repr(self._best_score)
        if tags:
            self._log_tags(self._client, tags)

    def _log_curves(self) -> None:
        from trainer.loggers.plots import plot_metric_curves

        epoch_hist: dict[str, list[tuple[float, float]]] = {}
        step_hist: dict[str, list[tuple[float, float]]] = {}
        for key, pts in self._history.items():
            if key in ("epoch", "step"):
                continue
            if key.endswith("_step"):
                step_hist[key] = [(s, v) for s, v, _ in pts]
                continue
            epochs = [e for _, _, e in pts]
            # epoch-level: one point per epoch (step-level keys repeat an epoch)
            if None not in epochs and len(set(epochs)) == len(epochs):
                epoch_hist[key] = [(e, v) for _, v, e in pts]  # type: ignore[misc]
            else:
                step_hist[key] = [(s, v) for s, v, _ in pts]
        with tempfile.TemporaryDirectory() as tmp:
            for name, hist, xlabel in (
                ("metrics_epoch", epoch_hist, "epoch"),
                ("metrics_step", step_hist, "step"),
            ):
                png = plot_metric_curves(hist, Path(tmp) / f"{name}.png", xlabel=xlabel)
                if png is not None:
                    self._client.log_artifact(self._run_id, str(png), "plots")


# ---------------------------------------------------------------------------- writing


def _stop_writer_thread(q: queue.Queue[Any], thread: threading.Thread) -> None:
    """End a dropped logger's writer after what is queued (at garbage collection or exit)."""
    if not thread.is_alive():  # stopped by finalize() or pickling
        return
    q.put(None)
    if thread is not threading.current_thread():
        thread.join(60)


def _writer_loop(
    q: queue.Queue[Any], args: tuple[Any, ...], errors: list[tuple[int, BaseException]]
) -> None:
    """The writer thread: row batches from ``q`` until None."""
    while True:
        rows = q.get()
        try:
            if rows is None:
                return
            _write_or_keep_error(rows, args, errors)
        finally:
            q.task_done()


def _write_or_keep_error(
    rows: list[tuple[float, int, dict[str, Any]]],
    args: tuple[Any, ...],
    errors: list[tuple[int, BaseException]],
) -> None:
    try:
        write_rows(args[0], args[1], rows, *args[2:])
    except Exception as exc:  # noqa: BLE001 - keep training; reported at the next flush
        errors.append((len(rows), exc))


def _as_floats(rows: list[tuple[float, int, Mapping[str, Any]]]) -> list[list[float]]:
    """The values of each row as floats. Accelerator tensors are converted together (one cat,
    one tolist per device) instead of one ``.item()`` (a device sync) each; host tensors are
    read one by one (no sync there, and cheaper than an op)."""
    import torch

    out = [list(m.values()) for _, _, m in rows]
    on_device: dict[Any, tuple[list[tuple[int, int]], list[Any]]] = {}
    for i, vals in enumerate(out):
        for j, v in enumerate(vals):
            cls = v.__class__
            if cls is float or cls is int:  # the common case first: isinstance on
                continue  # torch.Tensor goes through a Python-level __instancecheck__
            if not isinstance(v, torch.Tensor):
                continue
            if v.is_cpu:
                vals[j] = v.item() if v.numel() == 1 else v.reshape(-1)[0].item()
            else:
                slots, ts = on_device.setdefault(v.device, ([], []))
                slots.append((i, j))
                ts.append(v.detach().reshape(-1)[:1])
    for slots, ts in on_device.values():
        try:
            flat = torch.cat(ts).double().tolist()
        except (RuntimeError, TypeError):  # odd dtypes: one at a time
            flat = [float(t) for t in ts]
        for (i, j), v in zip(slots, flat):
            out[i][j] = v
    return out


def write_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    """Log ``params`` (flat ``name -> str``) into ``run_id``, keys made valid for MLflow, at
    most 100 per ``log_batch`` call."""
    from mlflow.entities import Param

    items = [Param(_sanitize_key(k), v) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS):
        client.log_batch(run_id, params=items[i : i + _MAX_PARAMS])


def write_rows(
    client: Any,
    run_id: str,
    rows: list[tuple[float, int, Mapping[str, Any]]],
    keymap: dict[str, str],
    history: dict[str, list[tuple[int, float, float | None]]] | None,
    last_epoch: list[float | None] | None = None,
) -> None:
    """Send metric rows ``(time_s, step, {name: float or 0-d tensor})`` with ``log_batch``
    (≤ 1000 per call); record ``(step, value, epoch)`` points in ``history`` for the plots.

    ``epoch`` (which the Trainer repeats on every step) is written only at the first and last
    row of each run of equal values; ``last_epoch`` holds the last value written across calls.
    """
    from mlflow.entities import Metric

    values = _as_floats(rows)
    epochs: list[float | None] = []
    for (_, _, metrics), vals in zip(rows, values):
        e = None
        for key, v in zip(metrics, vals):
            if key == "epoch":
                e = float(v)
                break
        epochs.append(e)
    prev = last_epoch[0] if last_epoch is not None else None
    n = len(rows)
    batch: list[Any] = []
    for i, ((t, step, metrics), vals) in enumerate(zip(rows, values)):
        ts, step = int(t * 1000), int(step)
        epoch = epochs[i]
        for key, value in zip(metrics, vals):
            name = keymap.get(key)
            if name is None:
                name = keymap[key] = _sanitize_key(key)
            value = float(value)
            if key == "epoch" and value == prev and i + 1 < n and epochs[i + 1] == value:
                pass  # inside a run of equal epoch values: not written
            else:
                batch.append(Metric(name, value, ts, step))
            if key == "epoch":
                prev = value
            if history is not None:
                pts = history.get(name)
                if pts is None:
                    pts = history[name] = []
                pts.append((step, value, epoch))
                if len(pts) > _HISTORY_CAP:
                    del pts[::2]
        if len(batch) >= _MAX_METRICS:
            client.log_batch(run_id, metrics=batch[:_MAX_METRICS])
            del batch[:_MAX_METRICS]
    for i in range(0, len(batch), _MAX_METRICS):
        client.log_batch(run_id, metrics=batch[i : i + _MAX_METRICS])
    if last_epoch is not None:
        last_epoch[0] = prev
