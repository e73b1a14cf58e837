"""One sweep process per study: while another process runs a study, a second `trainflow sweep`
of it refuses in one line before touching anything, and so does the flow (what a schedule
runs); another study of the same project is not held up. Real processes, real file locks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.config import load_config

REPO = Path(__file__).resolve().parents[2]
SMALL = ["trainer.max_epochs=1", "sweep.trials=1", "registry.enabled=false", "export.onnx=false",
         "export.torchscript=false", "retries.train.delays=[0]"]

HOLDER = """
import sys
from flows.sweep_lock import acquire
acquire(sys.argv[1], sys.argv[2])
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TRAINFLOW_PROJECT_DIR": str(project),
            "MLFLOW_TRACKING_URI": f"sqlite:///{project}/.trainflow/mlflow.db"}


@pytest.fixture
def running_sweep(project: Path) -> Iterator[tuple[str, str]]:
    """Another process holding the lock of the shipped sweep's study, as a running sweep does."""
    from flows.sweep import default_storage, study_name

    storage = default_storage(project / ".trainflow")
    name = study_name(load_config(REPO / "configs" / "sweep.yaml", SMALL))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, storage, name], env=_env(project),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield storage, name
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_second_sweep_of_a_running_study_refuses_in_one_line(
    project: Path, running_sweep: tuple[str, str]
) -> None:
    storage, name = running_sweep
    args = [a for s in SMALL for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", *args],
                          capture_output=True, text=True, env=_env(project), timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: sweep {name}: another process is running this study (lock "
        f"{project}/.trainflow/optuna.db.{name}.lock); wait for it to finish, or give this "
        "sweep its own sweep.study_name"]
    assert not (project / ".trainflow" / "optuna.db").exists()  # the study was never opened
    assert not (project / ".trainflow" / "mlflow.db").exists()  # nor anything tracked


@pytest.mark.usefixtures("prefect_api")
def test_the_flow_refuses_too_and_other_studies_run(
    project: Path, running_sweep: tuple[str, str]
) -> None:
    from flows.sweep_flow import run_sweep
    from flows.sweep_lock import StudyBusy

    storage, name = running_sweep
    cfg = load_config(REPO / "configs" / "sweep.yaml", SMALL)
    with pytest.raises(StudyBusy, match=f"sweep {name}: another process is running this study"):
        run_sweep(cfg)
    assert not (project / ".trainflow" / "optuna.db").exists()

    other = load_config(REPO / "configs" / "sweep.yaml", [*SMALL, "sweep.study_name=other"])
    result = run_sweep(other)
    assert result.study_name == "other" and result.finished == 1


def test_a_shared_postgresql_study_is_locked_on_the_server() -> None:
    """The team stack's case: sweeps on several machines share a study in PostgreSQL; the lock
    is an advisory lock there, gone when its process is (not a file on one machine)."""
    import shutil
    import tempfile

    from flows.stack import PG_BIN, _pg_start, _pg_stop
    from flows.sweep_lock import StudyBusy, acquire, release
    from tests.ports import free_port

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 not installed ({PG_BIN})")
    pg = Path(tempfile.mkdtemp(prefix="trainflow-sweep-pg-"))
    pg.chmod(0o755)  # initdb runs as the postgres user under root
    port = free_port()
    try:
        password = _pg_start(pg / "pg", port)
        url = f"postgresql+psycopg://postgres:{password}@127.0.0.1:{port}/prefect"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, "shared"],
                                  env={**os.environ, "PYTHONPATH": str(REPO)},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(StudyBusy, match="advisory lock on its PostgreSQL database"):
                acquire(url, "shared")
            assert acquire(url, "another study")  # keyed by study
            release(url, "another study")
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        assert acquire(url, "shared")  # the holder's end released it
        release(url, "shared")
    finally:
        _pg_stop(pg / "pg")
        shutil.rmtree(pg, ignore_errors=True)
