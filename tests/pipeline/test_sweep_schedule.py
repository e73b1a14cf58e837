"""`trainflow sweep` on a schedule: `trainflow serve --sweep` against a real `prefect server`
registers the sweep deployment with its cron; a run triggered through the REST API tunes, and
the best trial is registered with its lineage. The server and the serve process are always
killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_deployment import _start, _stop

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = pytest.mark.slow


def _wait(what: str, check, timeout: float, proc: subprocess.Popen, log: Path):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, f"{what}: process ended\n" + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n" + (
            log.read_text()[-3000:])
        time.sleep(0.5)


def test_served_sweep_runs_on_demand_and_registers_the_best_trial(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    project = tmp_path / "project"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_PROJECT"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        TRAINFLOW_PROJECT_DIR=str(project),
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
    )
    small = ["sweep.trials=2", "trainer.max_epochs=2", "export.torchscript=false",
             "retries.train.delays=[0]"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env, tmp_path / "server.log"))
        _wait("prefect server health", lambda: httpx.get(f"{api}/health", timeout=2)
              .status_code == 200, 120, procs[0], tmp_path / "server.log")

        sets = [arg for s in small for arg in ("--set", s)]
        procs.append(_start([sys.executable, "-m", "flows.cli", "serve", "--sweep", *sets,
                             "--cron", "0 3 * * 0", "--name", "weekly"], env,
                            tmp_path / "serve.log"))

        def deployment() -> dict | None:
            resp = httpx.get(f"{api}/deployments/name/sweep/weekly", timeout=10)
            return resp.json() if resp.status_code == 200 else None

        dep = _wait("sweep deployment registered", deployment, 180, procs[1],
                    tmp_path / "serve.log")
        assert dep["parameters"]["overrides"] == small
        assert dep["parameters"]["config"] == str(REPO / "configs" / "sweep.yaml")
        scheds = httpx.get(f"{api}/deployments/{dep['id']}/schedules", timeout=10).json()
        assert [s["schedule"]["cron"] for s in scheds] == ["0 3 * * 0"]

        def created() -> dict | None:
            resp = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={},
                              timeout=30)
            if resp.status_code == 503:  # the server's SQLite is busy: Prefect's client retries
                return None
            assert resp.status_code == 201, resp.text[-2000:]
            return resp.json()

        run_id = _wait("flow run created", created, 120, procs[0], tmp_path / "server.log")["id"]

        def finished() -> str | None:
            fr = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
            state = fr["state"]["type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        state = _wait("the triggered sweep run", finished, 400, procs[1], tmp_path / "serve.log")
        assert state == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]
    finally:
        for p in reversed(procs):
            _stop(p)
    assert all(p.poll() is not None for p in procs)

    # The run tuned in the project the serve process was given and registered the best trial.
    uri = f"sqlite:///{project / '.trainflow' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    version = client.get_model_version("digits-mlp", "1")
    assert version.tags["trainflow.sweep"].startswith("sweep-")
    assert version.tags["trainflow.trial"] in ("0", "1")
    parent = client.get_run(version.tags["trainflow.sweep_run_id"])
    assert parent.data.tags["best.trial"] == version.tags["trainflow.trial"]
