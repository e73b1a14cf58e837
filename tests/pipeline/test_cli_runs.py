"""`trainflow run` as a user runs it (new processes, the project's own Prefect home, no server
set up): a cached rerun on the early-started local API, and a failed run retried through
Prefect's own `prefect flow-run retry`, which skips the stages that completed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMALL = ["trainer.max_epochs=2", "model.kwargs={hidden: 32}", "export.torchscript=false",
         "retries.evaluate.retries=0", "retries.train.delays=[0]"]

pytestmark = pytest.mark.slow

FLAKY = '''
import os
from models.digits import DigitsMLP


class FlakyMLP(DigitsMLP):
    """Fails its test step while the file named by $FLAKY_MARKER exists (an outage)."""

    def test_step(self, batch, batch_idx):
        if os.path.exists(os.environ["FLAKY_MARKER"]):
            raise RuntimeError("injected: the evaluation data service is down")
        return super().test_step(batch, batch_idx)
'''


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               TRAINFLOW_PROJECT_DIR=str(project),
               TRAINFLOW_CACHE_DIR=os.environ.get("TRAINFLOW_CACHE_DIR", str(project / "cache")),
               OMP_NUM_THREADS="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _prefect_db(project: Path) -> sqlite3.Connection:
    return sqlite3.connect(project / ".trainflow" / "prefect" / "prefect.db")


def _task_states(project: Path, flow_run_id: str) -> dict[str, str]:
    """The latest state of each stage's task run in one flow run, as Prefect recorded it."""
    with _prefect_db(project) as con:
        rows = con.execute(
            "select task_key, name, state_name from task_run where flow_run_id = ? "
            "order by expected_start_time, start_time", (flow_run_id,)).fetchall()
    return {name.rsplit("-", 1)[0]: state for _key, name, state in rows}


def _flow_runs(project: Path) -> list[tuple[str, str, int]]:
    with _prefect_db(project) as con:
        return con.execute(
            "select id, state_type, run_count from flow_run order by created").fetchall()


def test_cli_run_then_cached_rerun(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = _env(project)
    args = [str(BIN / "trainflow"), "run", *(a for o in SMALL for a in ("--set", o))]
    first = _run(args, env, project)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    home = project / ".trainflow" / "prefect"
    assert (home / "trainflow-api.json").is_file()  # the database is current: later starts
    second = _run(args, env, project)  # skip the migration check
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "View at http" not in second.stdout + second.stderr  # no UI is served
    runs = _flow_runs(project)
    assert [r[1] for r in runs] == ["COMPLETED", "COMPLETED"]
    states = _task_states(project, runs[1][0])
    assert states == {"prepare_data": "Cached", "train": "Cached", "evaluate": "Cached",
                      "export": "Cached", "register": "Cached", "promote": "Completed"}
    # the API stopped only once it had written the last states and events (none left behind)
    with _prefect_db(project) as con:
        finals = con.execute(
            "select t.name from task_run t join events e on e.resource_id = "
            "'prefect.task-run.' || t.id and e.event = 'prefect.task-run.' || t.state_name "
            "where t.flow_run_id = ?", (runs[1][0],)).fetchall()
        flow_done = con.execute("select count(*) from events where resource_id = ? and event = "
                                "'prefect.flow-run.Completed'", (f"prefect.flow-run.{runs[1][0]}",))
        assert len(finals) == 6 and flow_done.fetchone() == (1,)


def test_failed_run_retried_by_prefect_skips_completed_stages(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "flaky_model.py").write_text(FLAKY)
    marker = tmp_path / "outage"
    marker.write_text("down")
    env = _env(project, FLAKY_MARKER=str(marker),
               PYTHONPATH=os.pathsep.join([str(tmp_path / "code"), str(REPO)]))
    project.mkdir()
    args = [str(BIN / "trainflow"), "run", "--set", "model.class_path=flaky_model:FlakyMLP",
            *(a for o in SMALL for a in ("--set", o))]
    failed = _run(args, env, project)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "injected: the evaluation data service is down" in failed.stderr
    [(run_id, state, _)] = _flow_runs(project)
    assert state == "FAILED"
    assert _task_states(project, run_id) == {
        "prepare_data": "Completed", "train": "Completed", "evaluate": "Failed"}
    ckpt = next((project / ".trainflow" / "stages" / "train").glob("*/checkpoints/best*.ckpt"))
    mtime = ckpt.stat().st_mtime_ns

    marker.unlink()  # the outage is over: retry the same flow run with Prefect's own CLI
    retried = _run([str(BIN / "prefect"), "flow-run", "retry", run_id, "--entrypoint",
                    f"{REPO / 'flows' / 'pipeline.py'}:training_pipeline"],
                   {**env, "PREFECT_HOME": str(project / ".trainflow" / "prefect")}, project)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    [(same_id, state, run_count)] = _flow_runs(project)
    assert same_id == run_id and state == "COMPLETED" and run_count == 2
    assert _task_states(project, run_id) == {
        "prepare_data": "Cached", "train": "Cached", "evaluate": "Completed",
        "export": "Completed", "register": "Completed", "promote": "Completed"}
    assert ckpt.stat().st_mtime_ns == mtime  # training did not run again
