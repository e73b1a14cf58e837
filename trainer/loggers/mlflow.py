"""MLflowLogger: hyperparameters, metrics, checkpoints and plots into an MLflow run.

The training thread only appends ``(time, step, metrics)`` to a list; full chunks go through a
bounded queue to one writer thread, which pipes them to a writer process that sends them with
``MlflowClient.log_batch`` (≤ 1000 metrics per call), or sends them itself
(``writer="thread"``). ``save()`` (every epoch end) and ``finalize()`` flush and wait. The
client, the thread and the process are created lazily and dropped when pickled (the Trainer is
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
        queue_size: bounded queue length, in chunks of ``chunk_size`` metric rows; a full queue
            blocks the training thread (no metric is dropped).
        chunk_size: metric rows gathered on the training thread before a hand-off.
        writer: ``"process"`` (default): the writer thread pipes the rows to a child process
            (``python -m trainer.loggers.mlflow``) that calls ``log_batch``, so MLflow's
            SQLAlchemy work does not hold this process's GIL during training; falls back to
            ``"thread"`` (``log_batch`` from the writer thread) if the child cannot start or dies.
    """

    def __init__(
        self,
        experiment_name: str = "trainflow",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        log_checkpoints: bool | str = True,
        log_plots: bool = True,
        queue_size: int = 64,
        chunk_size: int = 256,
        writer: str = "process",
    ) -> None:
        if log_checkpoints not in (True, False, "all"):
            raise ValueError(
                "MLflowLogger.log_checkpoints: must be True, False or 'all' "
                f"(got {log_checkpoints!r})"
            )
        if writer not in ("process", "thread"):
            raise ValueError(f"MLflowLogger.writer: must be 'process' or 'thread' (got {writer!r})")
        if queue_size < 1 or chunk_size < 1:
            raise ValueError(
                f"MLflowLogger: queue_size and chunk_size must be >= 1 (got {queue_size}, "
                f"{chunk_size})"
            )
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri_arg = tracking_uri
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._run_id = run_id
        self._resume = run_id is not None
        self.log_checkpoints = log_checkpoints
        self.log_plots = log_plots
        self.queue_size = queue_size
        self.chunk_size = chunk_size
        self.writer = writer
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
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue[Any] | None = None
        self._buf: list[tuple[int, int, dict[str, float]]] = []
        self._errors: list[str] = []
        self._reported = 0
        self._history: dict[str, list[tuple[int, float, float | None]]] = {}
        self._sink: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        if global_rank() == 0 and not self._finalized:
            self._ensure_run()  # one run shared by the caller and the DDP workers
            self._flush()
        state = self.__dict__.copy()
        for key in (
            "_client",
            "_thread",
            "_queue",
            "_buf",
            "_errors",
            "_reported",
            "_history",
            "_sink",
            "_lock",
        ):
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
            from flows.tracking import resolve_tracking_uri

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
        from flows.tracking import check_reachable

        self._tracking_uri = check_reachable(self.tracking_uri)
        return self._tracking_uri

    def _ensure_run(self) -> None:
        if self._client is not None:
            return
        with self._lock:
            if self._client is not None:
                return
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            from flows.tracking import get_or_create_experiment

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

    def _ensure_writer(self) -> None:
        self._ensure_run()
        if self._thread is not None and self._thread.is_alive():
            return
        self._sink = self._make_sink()
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._thread = threading.Thread(
            target=self._writer,
            args=(self._queue,),
            name=f"mlflow-writer-{str(self._run_id)[:8]}",
            daemon=True,
        )
        self._thread.start()

    def _make_sink(self) -> Any:
        if self.writer == "process":
            try:
                return _ProcessSink(self.tracking_uri, self._run_id, self.log_plots, self._client)
            except Exception as exc:  # noqa: BLE001 - e.g. a daemonic or sandboxed process
                log.warning("MLflowLogger: no writer process (%s); writing from a thread", exc)
        return _ThreadSink(self._client, self._run_id, self.log_plots)

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
        self._ensure_writer()  # the run, and the writer (process) starting in the background
        from mlflow.entities import Param

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
        items = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(items), _MAX_PARAMS):
            self._client.log_batch(self._run_id, params=items[i : i + _MAX_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metric values at ``step`` (written by the writer thread; no I/O here)."""
        if global_rank() != 0:
            return
        if self._thread is None:
            self._ensure_writer()
        # floats here (the contract's type; a 0-d tensor is converted), so the rows pickle small
        values = {k: float(v) for k, v in metrics.items()}
        self._buf.append((int(time.time() * 1000), int(step), values))
        if len(self._buf) >= self.chunk_size:
            self._handoff()

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
                    self._put(("artifact", str(path), "checkpoints"))

    def save(self) -> None:
        """Flush: hand the buffered rows to the writer and wait until they are written."""
        if global_rank() != 0 or (self._thread is None and not self._buf):
            return
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
            if self._errors[self._reported :]:
                self._report_errors()

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

    def _put(self, item: Any) -> None:
        self._ensure_writer()
        assert self._queue is not None
        self._queue.put(item)

    def _handoff(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, []
            self._put(("metrics", buf))

    def _flush(self, timeout: float = 300.0) -> None:
        if self._thread is None and not self._buf:
            return
        self._handoff()
        done = threading.Event()
        self._put(("flush", done))
        if not done.wait(timeout):
            log.warning("MLflowLogger: flush of run %s took over %.0fs", self._run_id, timeout)
        if self._errors[self._reported :]:
            self._report_errors()

    def _report_errors(self) -> None:
        new = self._errors[self._reported :]
        self._reported = len(self._errors)
        log.warning(
            "MLflowLogger: %d write(s) to run %s failed; first: %s", len(new), self._run_id, new[0]
        )

    def _stop_writer(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._queue.put(("stop", None))
            self._thread.join(60)
        self._thread = None
        self._queue = None

    def _writer(self, q: queue.Queue[Any]) -> None:
        sink = self._sink
        while True:
            kind, payload, *rest = q.get()
            for _attempt in (0, 1):  # a second try after falling back to a thread sink
                try:
                    if kind == "stop":
                        self._history = sink.close()
                        return
                    if kind == "flush":
                        sink.flush()
                        payload.set()
                    elif kind == "metrics":
                        sink.metrics(payload)
                    elif kind == "artifact":
                        sink.artifact(payload, rest[0])
                    self._errors.extend(sink.take_errors())
                    break
                except _SinkDied as exc:  # the writer process is gone: write in-process
                    log.warning("MLflowLogger: %s; writing from this process instead", exc)
                    pending = getattr(sink, "pending", [])
                    sink = self._sink = _ThreadSink(self._client, self._run_id, self.log_plots)
                    try:  # replay what the process may not have written (duplicates are merged)
                        for item in pending:
                            getattr(sink, item[0])(*item[1:])
                    except Exception as exc2:  # noqa: BLE001
                        self._errors.append(f"{type(exc2).__name__}: {str(exc2)[:300]}")
                except Exception as exc:  # noqa: BLE001 - keep training; reported at save/finalize
                    self._errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                    if kind == "flush":
                        payload.set()
                    break

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


# ---------------------------------------------------------------------------- writer sinks


def write_rows(
    client: Any,
    run_id: str,
    rows: list[tuple[int, int, dict[str, float]]],
    keymap: dict[str, str],
    history: dict[str, list[tuple[int, float, float | None]]] | None,
) -> None:
    """Send metric rows ``(timestamp_ms, step, {name: value})`` with ``log_batch`` (≤ 1000 per
    call); record ``(step, value, epoch)`` points in ``history`` for the plots."""
    from mlflow.entities import Metric

    batch: list[Any] = []
    for ts, step, metrics in rows:
        epoch = metrics.get("epoch")
        for key, value in metrics.items():
            name = keymap.get(key)
            if name is None:
                name = keymap[key] = _sanitize_key(key)
            value = float(value)
            batch.append(Metric(name, value, ts, step))
            if history is not None:
                pts = history.setdefault(name, [])
                pts.append((step, value, None if epoch is None else float(epoch)))
                if len(pts) > _HISTORY_CAP:
                    del pts[::2]
    for i in range(0, len(batch), _MAX_METRICS):
        client.log_batch(run_id, metrics=batch[i : i + _MAX_METRICS])


class _SinkDied(RuntimeError):
    pass


class _ThreadSink:
    """Writes from the writer thread of the training process."""

    def __init__(self, client: Any, run_id: str, keep_history: bool) -> None:
        self.client, self.run_id = client, run_id
        self.keymap: dict[str, str] = {}
        self.history: dict[str, Any] | None = {} if keep_history else None

    def metrics(self, rows: list[Any]) -> None:
        write_rows(self.client, self.run_id, rows, self.keymap, self.history)

    def artifact(self, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def flush(self) -> None:
        pass

    def take_errors(self) -> list[str]:
        return []

    def close(self) -> dict[str, Any]:
        return self.history or {}


class _ProcessSink:
    """Pipes pickled messages to ``python -m trainer.loggers.mlflow`` (the writer process).

    The pipe is the bounded buffer between the two (the writer thread blocks, without holding
    the GIL, when it is full); replies come only for ready, flush and stop. Until the process
    has imported mlflow and says "ready" (a few seconds), rows wait in the writer thread and a
    flush writes them from there, so an epoch end never waits for the process to start and
    what was flushed is in the store.
    """

    def __init__(self, uri: str, run_id: str, keep_history: bool, client: Any) -> None:
        import subprocess
        import sys

        env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.loggers.mlflow", uri, run_id, str(int(keep_history))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.early = _ThreadSink(client, run_id, keep_history)
        self.is_ready = False
        self.errors: list[str] = []
        self.unsent: list[tuple[Any, ...]] = []  # waiting for the process to be ready
        self.sent: list[tuple[Any, ...]] = []  # sent, not yet confirmed by a flush

    @property
    def pending(self) -> list[tuple[Any, ...]]:
        """What may not be in the store yet (replayed in-process if the process dies)."""
        return self.sent + self.unsent

    def _ready(self) -> bool:
        if not self.is_ready:
            import select

            if select.select([self.proc.stdout], [], [], 0)[0]:
                self._recv()  # ("ready",), or _SinkDied when the process failed to start
                self.is_ready = True
        return self.is_ready

    def _send(self, msg: tuple[Any, ...]) -> None:
        import pickle

        try:
            pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError, ValueError):
            raise _SinkDied(f"the writer process exited (code {self.proc.poll()})") from None

    def _recv(self) -> Any:
        import pickle

        try:
            return pickle.load(self.proc.stdout)  # type: ignore[arg-type]
        except (EOFError, OSError, pickle.UnpicklingError):
            self.proc.wait(10)
            raise _SinkDied(f"the writer process exited (code {self.proc.returncode})") from None

    def _submit(self, item: tuple[Any, ...]) -> None:
        if not self._ready():
            self.unsent.append(item)
            return
        for queued in [*self.unsent, item]:
            self.sent.append(queued)
            self._send(queued)
        self.unsent.clear()

    def metrics(self, rows: list[Any]) -> None:
        self._submit(("metrics", rows))

    def artifact(self, path: str, artifact_path: str | None) -> None:
        self._submit(("artifact", path, artifact_path))

    def _write_unsent_here(self) -> None:
        while self.unsent:
            item = self.unsent.pop(0)
            getattr(self.early, item[0])(*item[1:])

    def flush(self) -> None:
        if not self._ready():
            self._write_unsent_here()
            return
        for queued in self.unsent:
            self.sent.append(queued)
            self._send(queued)
        self.unsent.clear()
        self._send(("flush",))
        _, errors = self._recv()
        self.errors += errors
        self.sent.clear()

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors

    def close(self) -> dict[str, Any]:
        if not self._ready():  # never got going: do not wait for it to start
            self._write_unsent_here()
            self.proc.kill()
            self.proc.wait(10)
            return self.early.close()
        self.flush()
        self._send(("stop",))
        _, late, errors = self._recv()
        self.errors += errors
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(30)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        history = self.early.close()
        for key, pts in late.items():
            history[key] = history.get(key, []) + pts
        return history


def _writer_process_main(argv: list[str]) -> int:
    """The writer process: read pickled messages on stdin, ``log_batch`` them, reply on stdout."""
    import pickle
    import sys

    uri, run_id, keep = argv[0], argv[1], argv[2] == "1"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.get_run(run_id)  # the store is open
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    pickle.dump(("ready",), stdout)
    stdout.flush()
    keymap: dict[str, str] = {}
    history: dict[str, Any] | None = {} if keep else None
    errors: list[str] = []
    while True:
        try:
            msg = pickle.load(stdin)
        except EOFError:
            return 0
        kind = msg[0]
        try:
            if kind == "metrics":
                write_rows(client, run_id, msg[1], keymap, history)
            elif kind == "artifact":
                client.log_artifact(run_id, msg[1], msg[2])
        except Exception as exc:  # noqa: BLE001 - reported to the parent at the next flush
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        if kind == "flush":
            pickle.dump(("flushed", errors), stdout)
            stdout.flush()
            errors = []
        elif kind == "stop":
            pickle.dump(("stopped", history or {}, errors), stdout)
            stdout.flush()
            return 0


if __name__ == "__main__":
    import sys as _sys

    raise SystemExit(_writer_process_main(_sys.argv[1:]))
