"""`trainflow stack` without servers: bad input is one line, no stack is reported as such, and
the registry lock is chosen by what the writers share."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks import promotion_lock


@pytest.fixture
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path))
    return tmp_path


def test_status_and_down_without_a_stack(empty: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(app, ["stack", "status"])
    assert status.exit_code == 1 and "no stack is up here" in status.output
    down = runner.invoke(app, ["stack", "down"])
    assert down.exit_code == 0 and "no stack is up here" in down.output


def test_bad_database_url_is_one_line_and_leaves_nothing(empty: Path) -> None:
    result = CliRunner().invoke(app, ["stack", "up", "--database-url", "mysql://db:3306"])
    assert result.exit_code == 1
    assert "error: --database-url: not a postgresql://user:pw@host:port URL" in result.output
    assert not (empty / ".trainflow" / "stack" / "state.json").exists()


def test_lock_lives_on_the_prefect_server_only_for_a_server_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert not promotion_lock.uses_prefect(is_sqlite=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert promotion_lock.uses_prefect(is_sqlite=False)
    assert not promotion_lock.uses_prefect(is_sqlite=True)  # SQLite writers share a file
    lock = promotion_lock.hold(None, tmp_path / "x.lock", is_sqlite=False, timeout=1)
    with lock:  # a store-wide write (no model name) takes the file lock, even with a server
        assert (tmp_path / "x.lock").exists()
    assert promotion_lock.limit_name("digits-mlp") == "trainflow-registry-digits-mlp"


def test_file_lock_times_out_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "reg.lock"
    with promotion_lock.file_lock(path, timeout=1):
        with pytest.raises(promotion_lock.LockTimeout, match="still held by another process"):
            with promotion_lock.file_lock(path, timeout=0.2):
                pass
