"""Bad input and permanent faults (issue 15): one line and a non-zero exit, checked before any
stage runs, never retried; a corrupt ``last.ckpt`` does not stop the rerun."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.config import load_config

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "data" / "digits.parquet"


def _one_line_failure(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code not in (0, None), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    # the error is the one last line; a command that logs to a file names that file before it
    assert lines and lines[-1].startswith("error: "), res.output
    assert all(ln.startswith("full log: ") for ln in lines[:-1]), res.output
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["promote", "../x", "1"], "NAME"),
        (["promote", "digits-mlp", "abc"], "VERSION"),
        (["promote", "digits-mlp", "1", "--min-delta", "nan"], "--min-delta"),
        (["promote", "digits-mlp", "1", "--alias", "../x"], "--alias"),
        (["predict", "--model", "../x", "--input", str(DIGITS), "--output", "p.parquet"],
         "model name"),
        (["serve", "--cron", "99 * * *"], "--cron"),
        (["ui", "--port", "99999"], "--port"),
        (["run", "--set", "registry.model_name=../x"], "registry.model_name"),
        (["run", "--set", "registry.alias=../x"], "registry.alias"),
        (["run", "--set", "model.kwargs.hidden=-3"], "model.kwargs"),
    ],
)
def test_bad_input_is_one_line_before_anything_runs(
    project: Path, args: list[str], names: str
) -> None:
    line = _one_line_failure(args)
    assert names in line
    assert not (project / ".trainflow" / "stages").exists()  # no stage ran, nothing registered
    assert not (project / "p.parquet").exists()


def test_failed_export_leaves_no_temp_folder(tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    line = _one_line_failure(["export", str(bad), "--onnx", str(tmp_path / "out" / "m.onnx")])
    assert "checkpoint" in line
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_ui_on_a_busy_port_says_it_is_taken(project: Path) -> None:
    import signal
    import socket

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            line = _one_line_failure(["ui", "--port", str(s.getsockname()[1])])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert "is taken" in line


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        sqlite3.OperationalError("attempt to write a readonly database"),
        sqlite3.OperationalError("database or disk is full"),
        RuntimeError("checkpoint 'x' cannot be read as a trainflow checkpoint (truncated)"),
    ],
)
def test_permanent_errors_are_not_retried(exc: BaseException) -> None:
    from tasks.types import is_transient

    assert not is_transient(exc)
    wrapped = RuntimeError("stage failed")
    wrapped.__cause__ = exc
    assert not is_transient(wrapped)


def test_transient_errors_are_retried() -> None:
    from tasks.types import is_transient

    assert is_transient(ConnectionResetError("lost the store"))
    assert is_transient(sqlite3.OperationalError("database is locked"))


def test_corrupt_last_checkpoint_is_moved_aside_and_training_goes_on(tmp_path: Path) -> None:
    from tasks.prepare_data import prepare
    from tasks.train import fit

    cfg = load_config(None, ["trainer.max_epochs=2", "model.kwargs={hidden: 8}"])
    data = prepare(cfg.data, tmp_path / "data")
    root = tmp_path / "train"
    first = fit(data, cfg, root, "k", track=False)
    (root / "result.json").unlink()  # as if killed after the last save, before finishing
    last = root / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # truncated by a kill or a full disk
    with pytest.warns(UserWarning, match="last.ckpt"):
        again = fit(data, cfg, root, "k", track=False)
    assert (root / "checkpoints" / "last.ckpt.corrupt").exists()
    assert again.checkpoint.exists() and again.epochs == first.epochs
