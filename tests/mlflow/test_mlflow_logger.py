"""MLflowLogger against a real SQLite MLflow store, driven directly (no Trainer)."""

from __future__ import annotations

import gc
import math
import pickle
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.loggers.mlflow import MLflowLogger, flatten_params


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, uri)


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_flatten_params_nested() -> None:
    flat = flatten_params({"model": {"hidden": 64, "act": {"name": "relu"}}, "lr": 0.1, "l": [1]})
    assert flat == {"model.hidden": "64", "model.act.name": "relu", "lr": "0.1", "l": "[1]"}


def test_params_metrics_nan_flush_and_finish(store_uri: str) -> None:
    logger = MLflowLogger(
        "logger-basic",
        run_name="basic",
        tracking_uri=store_uri,
        tags={"k": 1},
        max_buffered_rows=7,  # 41 rows: five writes when the buffer fills, one at save()
    )
    params = {"model": {"hidden": 64}, **{f"p{i:03d}": i for i in range(250)}}
    logger.log_hyperparams(params)  # 251 params: three log_batch calls of <= 100
    for step in range(40):
        logger.log_metrics({"train_loss_step": 1.0 / (step + 1), "weird key(1)": 2.0}, step=step)
    logger.log_metrics({"val_loss": 0.5, "val_acc": float("nan"), "epoch": 0}, step=39)
    logger.save()  # handed to the writer
    logger.flush()  # written: visible before finalize
    client = _client(store_uri)
    hist = client.get_metric_history(logger.run_id, "train_loss_step")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(40))
    assert math.isnan(client.get_metric_history(logger.run_id, "val_acc")[0].value)
    assert len(client.get_metric_history(logger.run_id, "weird key_1_")) == 40
    logger.finalize("success")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert len(run.data.params) == 251 and run.data.params["model.hidden"] == "64"
    assert run.data.tags["k"] == "1"
    arts = _artifacts(client, logger.run_id)
    assert "plots/metrics_epoch.png" in arts and "plots/metrics_step.png" in arts
    logger.finalize("success")  # idempotent


@pytest.mark.parametrize(("status", "expected"), [("failed", "FAILED"), ("interrupted", "KILLED")])
def test_failed_and_interrupted_runs(store_uri: str, status: str, expected: str) -> None:
    logger = MLflowLogger("logger-status", tracking_uri=store_uri, log_plots=False)
    logger.log_metrics({"loss": 1.0}, step=0)
    error = RuntimeError("boom at batch 3") if status == "failed" else KeyboardInterrupt()
    logger.finalize(status, error)
    run = _client(store_uri).get_run(logger.run_id)
    assert run.info.status == expected
    assert run.data.tags["error_type"] == type(error).__name__
    if status == "failed":
        assert run.data.tags["error"] == "RuntimeError: boom at batch 3"


def test_resume_run_id_and_unknown_run(store_uri: str) -> None:
    first = MLflowLogger("logger-resume", tracking_uri=store_uri, log_plots=False)
    first.log_hyperparams({"lr": 0.1})
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("interrupted")
    second = MLflowLogger(tracking_uri=store_uri, run_id=first.run_id, log_plots=False)
    second.log_hyperparams({"lr": 0.1, "epochs": 3})  # same value again: skipped, no error
    second.log_metrics({"loss": 0.5}, step=1)
    second.finalize("success")
    client = _client(store_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "epochs": "3"}
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "loss")) == [0, 1]
    with pytest.raises(ValueError, match="no run 'nope'"):
        MLflowLogger(tracking_uri=store_uri, run_id="nope").log_metrics({"a": 1.0}, step=0)


def test_pickle_writes_the_buffer_drops_the_client_keeps_run(store_uri: str) -> None:
    logger = MLflowLogger("logger-pickle", tracking_uri=store_uri, log_plots=False)
    logger.log_metrics({"loss": 1.0}, step=0)  # client exists, row buffered
    blob = pickle.dumps(logger)  # writes the buffered row first
    state = logger.__getstate__()
    assert "_client" not in state and "_rows" not in state
    clone = pickle.loads(blob)
    assert clone._client is None and clone._rows == []
    clone.log_metrics({"loss": 0.5}, step=1)
    clone.finalize("success")
    assert clone.run_id == logger.run_id
    steps = sorted(m.step for m in _client(store_uri).get_metric_history(logger.run_id, "loss"))
    assert steps == [0, 1]


def test_pickle_before_first_log_creates_the_shared_run(store_uri: str) -> None:
    logger = MLflowLogger("logger-pickle2", tracking_uri=store_uri, log_plots=False)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._run_id is not None and clone._run_id == logger._run_id


def test_nonzero_rank_is_silent(store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    logger = MLflowLogger("logger-rank", tracking_uri=store_uri)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    assert logger._client is None and logger._run_id is None


def test_checkpoints_and_confusion_matrix(store_uri: str, tmp_path: Path) -> None:
    best, last = tmp_path / "epoch=1-step=4.ckpt", tmp_path / "last.ckpt"
    best.write_bytes(b"best")
    last.write_bytes(b"last")
    logger = MLflowLogger("logger-ckpt", tracking_uri=store_uri, log_plots=False)
    cb = types.SimpleNamespace(
        best_model_path=str(best), last_model_path=str(last), best_model_score=0.25
    )
    logger.after_save_checkpoint(cb)
    logger.log_confusion_matrix([[5, 1], [2, 7]], class_names=["cat", "dog"])
    logger.finalize("success")
    client = _client(store_uri)
    arts = _artifacts(client, logger.run_id)
    assert "checkpoints/best/epoch=1-step=4.ckpt" in arts
    assert "checkpoints/last/last.ckpt" in arts
    assert "plots/confusion_matrix.png" in arts
    tags = client.get_run(logger.run_id).data.tags
    assert tags["checkpoint.best_score"] == "0.25"


def test_checkpoints_all_mode_logs_each_save(store_uri: str, tmp_path: Path) -> None:
    logger = MLflowLogger(
        "logger-ckpt-all", tracking_uri=store_uri, log_checkpoints="all", log_plots=False
    )
    for i in range(2):
        path = tmp_path / f"e{i}.ckpt"
        path.write_bytes(b"x" * (i + 1))
        logger.after_save_checkpoint(
            types.SimpleNamespace(best_model_path=str(path), last_model_path="")
        )
    logger.save()
    arts = _artifacts(_client(store_uri), logger.run_id, "checkpoints")
    assert {"checkpoints/e0.ckpt", "checkpoints/e1.ckpt"} <= set(arts)
    logger.finalize("success")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log_checkpoints"):
        MLflowLogger(log_checkpoints="best")
    with pytest.raises(ValueError, match="max_buffered_rows: must be >= 1"):
        MLflowLogger(max_buffered_rows=0)
    with pytest.raises(ValueError, match="status must be one of"):
        MLflowLogger().finalize("done")
    with pytest.raises(ValueError, match="writer: must be 'thread' or 'inline'"):
        MLflowLogger(writer="process")


def test_nothing_written_during_the_epoch_until_save(store_uri: str) -> None:
    logger = MLflowLogger("logger-buffer", tracking_uri=store_uri, log_plots=False)
    for step in range(5):
        logger.log_metrics({"loss": 1.0 / (step + 1), "epoch": 0.0}, step=step)
    client = _client(store_uri)
    assert client.get_metric_history(logger.run_id, "loss") == []  # buffered only
    logger.save()
    logger.flush()
    hist = client.get_metric_history(logger.run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(s, 1.0 / (s + 1)) for s in range(5)]
    logger.finalize("success")


def test_write_failure_is_a_warning_and_training_goes_on(
    store_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = MLflowLogger("logger-badwrite", tracking_uri=store_uri, log_plots=False)
    logger.log_metrics({"loss": 1.0}, step=0)
    client = _client(store_uri)
    client.delete_run(logger.run_id)  # MLflow refuses writes to a deleted run
    with caplog.at_level("WARNING", logger="trainer.loggers.mlflow"):
        logger.save()
        logger.flush()  # the write failed on the writer thread: reported here
    assert "writing 1 metric row(s) to run" in caplog.text
    client.restore_run(logger.run_id)
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.finalize("success")
    assert [m.step for m in client.get_metric_history(logger.run_id, "loss")] == [1]
    assert client.get_run(logger.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_tensor_values_converted_at_write_and_epoch_written_where_it_changes(
    store_uri: str, writer: str
) -> None:
    logger = MLflowLogger("logger-tensors", tracking_uri=store_uri, writer=writer)
    assert logger.accepts_tensors
    values = {
        "f32": torch.tensor(0.25),
        "f64": torch.tensor(1 / 3, dtype=torch.float64),
        "i64": torch.tensor(7),
        "flag": torch.tensor(True),
        "one": torch.tensor([2.5]),  # shape (1,), e.g. a Metric's forward value
        "plain": 0.5,
    }
    for step in range(6):  # epoch 0 on steps 0-2, epoch 1 on steps 3-5
        row = {k: (v + step if k in ("f32", "f64") else v) for k, v in values.items()}
        logger.log_metrics({**row, "epoch": float(step // 3)}, step=step)
        if step == 3:
            logger.save()  # a flush inside a run of equal epochs
    logger.save()
    logger.flush()
    client = _client(store_uri)
    got = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, k))
        for k in [*values, "epoch"]
    }
    assert got["f32"] == [(s, 0.25 + s) for s in range(6)]
    assert got["f64"] == [(s, 1 / 3 + s) for s in range(6)]  # float64 kept exactly
    assert got["i64"] == [(s, 7.0) for s in range(6)] and got["flag"] == [
        (s, 1.0) for s in range(6)
    ]
    assert got["one"] == [(s, 2.5) for s in range(6)] and got["plain"] == [
        (s, 0.5) for s in range(6)
    ]
    # the first and last step of each epoch, not all six
    assert got["epoch"] == [(0, 0.0), (2, 0.0), (3, 1.0), (5, 1.0)]
    logger.finalize("success")
    assert [p[0] for p in logger._history["epoch"]] == list(range(6))  # the plots see all steps


def test_writer_thread_error_surfaces_on_the_training_thread_at_the_next_flush(
    store_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = MLflowLogger("logger-thread-err", tracking_uri=store_uri, max_buffered_rows=2)
    logger.log_metrics({"loss": 1.0}, step=0)
    client = _client(store_uri)
    client.delete_run(logger.run_id)  # MLflow refuses writes to a deleted run
    with caplog.at_level("WARNING", logger="trainer.loggers.mlflow"):
        logger.log_metrics({"loss": 0.9}, step=1)  # buffer full: handed to the writer thread
        writer = logger._thread
        assert writer is not None and writer.is_alive()
        logger.flush()  # waits for the writer, then reports its failure here
    records = [r for r in caplog.records if "writing 2 metric row(s)" in r.getMessage()]
    assert len(records) == 1 and records[0].threadName == threading.current_thread().name
    client.restore_run(logger.run_id)
    logger.log_metrics({"loss": 0.5}, step=2)
    logger.finalize("failed", RuntimeError("boom"))
    assert not writer.is_alive() and logger._thread is None  # finalize stops the writer
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(logger.run_id, "loss")] == [2]


def _logger_with_running_writer(store_uri: str, experiment: str) -> tuple[MLflowLogger, Any]:
    """A logger that has written one row through its writer thread, and that thread."""
    logger = MLflowLogger(experiment, tracking_uri=store_uri, log_plots=False)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    writer = logger._thread
    assert writer is not None and writer.is_alive()
    return logger, writer


def test_pickle_stops_the_writer_thread_after_writing(store_uri: str) -> None:
    logger, writer = _logger_with_running_writer(store_uri, "logger-thread-pickle")
    logger.log_metrics({"loss": 0.5}, step=1)
    blob = pickle.dumps(logger)
    assert logger._thread is None and logger._queue is None and not writer.is_alive()
    clone = pickle.loads(blob)
    assert clone._thread is None and clone._queue is None
    steps = sorted(m.step for m in _client(store_uri).get_metric_history(logger.run_id, "loss"))
    assert steps == [0, 1]
    clone.log_metrics({"loss": 0.25}, step=2)
    clone.finalize("success")


def test_a_logger_dropped_without_finalize_stops_its_writer_thread(store_uri: str) -> None:
    logger, writer = _logger_with_running_writer(store_uri, "logger-thread-gc")
    del logger  # the thread holds no reference to the logger
    gc.collect()
    writer.join(30)
    assert not writer.is_alive()


def test_save_does_not_wait_for_the_store_flush_and_finalize_do(store_uri: str) -> None:
    logger = MLflowLogger("logger-nowait", tracking_uri=store_uri, log_plots=False)
    logger.log_metrics({"loss": 1.0}, step=0)  # creates the run and its client
    client = _client(store_uri)
    held, real = threading.Event(), logger._client.log_batch
    logger._client.log_batch = lambda *a, **k: held.wait() and real(*a, **k)  # a slow store
    saver = threading.Thread(target=logger.save)
    saver.start()
    saver.join(60)  # (a guard against a hang, not a timing)
    assert not saver.is_alive(), "save() waited for the store"
    assert client.get_metric_history(logger.run_id, "loss") == []  # still being written
    logger.log_metrics({"loss": 0.5}, step=1)
    held.set()
    logger.finalize("success")  # waits for both rows before the run ends
    assert sorted(m.step for m in client.get_metric_history(logger.run_id, "loss")) == [0, 1]
    assert client.get_run(logger.run_id).info.status == "FINISHED"


def test_rows_handed_over_are_written_when_the_process_exits_without_finalize(
    store_uri: str,
) -> None:
    import os
    import subprocess
    import sys

    code = (
        "from trainer.loggers.mlflow import MLflowLogger\n"
        f"lg = MLflowLogger('logger-exit', tracking_uri={store_uri!r}, log_plots=False)\n"
        "for s in range(3):\n"
        "    lg.log_metrics({'loss': 1.0 / (s + 1)}, step=s)\n"
        "lg.save()\n"
        "print(lg.run_id)\n"  # and exit: no flush(), no finalize()
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip().splitlines()[-1]
    hist = _client(store_uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in hist) == [0, 1, 2]
