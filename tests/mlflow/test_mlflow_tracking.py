"""Tracking URI resolution and the fail-fast reachability check (real MLflow, SQLite)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trainer.loggers.mlflow_store import (
    TrackingUnreachable,
    check_reachable,
    default_tracking_uri,
    resolve_tracking_uri,
)


def test_default_is_embedded_sqlite_in_project(tmp_path: Path) -> None:
    uri = resolve_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/.trainflow/mlflow.db"
    assert uri == default_tracking_uri()
    check_reachable(uri)
    assert (tmp_path / ".trainflow" / "mlflow.db").is_file()


def test_env_then_argument_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking_uri("http://127.0.0.1:5999") == "http://127.0.0.1:5999"


def test_relative_sqlite_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path.resolve()}/rel/x.db"


def test_file_store_refused_with_fix(tmp_path: Path) -> None:
    with pytest.raises(TrackingUnreachable, match="file store is not supported.*sqlite:///"):
        resolve_tracking_uri(str(tmp_path / "mlruns"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_line() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingUnreachable) as info:
        check_reachable(uri, timeout=2)
    msg = str(info.value)
    assert uri in msg and "unreachable" in msg and "\n" not in msg


def test_unwritable_sqlite_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrackingUnreachable, match="cannot create folder"):
        check_reachable(f"sqlite:///{blocker}/sub/mlflow.db")


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TrackingUnreachable, match="cannot open the MLflow store"):
        check_reachable(f"sqlite:///{bad}")


def test_logger_fails_before_training_on_unreachable_uri() -> None:
    from trainer.loggers.mlflow import MLflowLogger

    logger = MLflowLogger(tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(TrackingUnreachable, match="unreachable"):
        logger.log_hyperparams({"lr": 0.1})
