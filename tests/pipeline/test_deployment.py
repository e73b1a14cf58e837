"""The deployment end to end: a real `prefect server`, `prefect deploy`, a run triggered through
the REST API and carried out by a `process` worker. The server and worker are always killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = pytest.mark.slow


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the process group we started (server spawns children)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _cli(args: list[str], env: dict) -> str:
    res = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_deploy_and_run_through_a_process_worker(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
        TRAINFLOW_PROJECT_DIR=str(tmp_path / "project"),
        OMP_NUM_THREADS="1",
    )
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env, tmp_path / "server.log"))
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert procs[0].poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prefect server did not get healthy in 120 s"
            time.sleep(0.5)

        _cli(["work-pool", "create", "trainflow", "--type", "process"], env)
        _cli(["work-pool", "set-concurrency-limit", "trainflow", "1"], env)
        _cli(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)

        dep = httpx.get(f"{api}/deployments/name/training-pipeline/nightly", timeout=10).json()
        assert dep["work_pool_name"] == "trainflow"
        pool = httpx.get(f"{api}/work_pools/trainflow", timeout=10).json()
        assert pool["concurrency_limit"] == 1
        scheds = httpx.get(f"{api}/deployments/{dep['id']}/schedules", timeout=10).json()
        assert [s["schedule"]["cron"] for s in scheds] == ["0 2 * * *"]

        procs.append(_start([PREFECT, "worker", "start", "--pool", "trainflow", "--type",
                             "process"], env, tmp_path / "worker.log"))
        small = ["trainer.max_epochs=1", "export.onnx=false", "export.torchscript=false",
                 "registry.enabled=false"]
        params = {"config": None, "overrides": small}
        # The server's SQLite can answer 5xx ("database is locked") while the worker registers
        # on a loaded machine; retry as Prefect's own client does.
        for _ in range(5):
            resp = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run",
                              json={"parameters": params}, timeout=30)
            if resp.status_code < 500:
                break
            time.sleep(2)
        assert resp.status_code == 201, resp.text[-2000:]
        run = resp.json()
        deadline = time.monotonic() + 300
        state = None
        while time.monotonic() < deadline:
            fr = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
            state = fr["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
        assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        # The run did its work in the project folder the worker was given.
        assert list((tmp_path / "project" / ".trainflow" / "stages" / "prepare_data").iterdir())
    finally:
        for p in reversed(procs):
            _stop(p)
    assert all(p.poll() is not None for p in procs)
