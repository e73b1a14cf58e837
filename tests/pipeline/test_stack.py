"""Team mode end to end: `trainflow stack up` on a real PostgreSQL, two pipelines from two project
folders at once through its servers, a promotion race between two processes that share only the
servers, then `stack down` with every process it started gone (checked by process group)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PY = sys.executable


def _folder(prefix: str) -> Path:
    # the postgres user (initdb runs as it under root) must be able to enter the project folder
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME")}
    return dict(env, PYTHONPATH=str(REPO), TRAINFLOW_PROJECT_DIR=str(project),
                PREFECT_HOME=str(project / ".prefect-client"), **extra)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def stack() -> Iterator[dict]:
    """`trainflow stack up` in its own project folder; `stack down` after, nothing left."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 not installed ({PG_BIN})")
    root = _folder("trainflow-stack-")
    # the worker asks for runs every 2 s, not Prefect's default 10 s: the deployment test's run
    # starts sooner (the polling is Prefect's; what is tested is that the run goes through)
    env = _env(root, PREFECT_WORKER_QUERY_SECONDS="2")
    up = subprocess.run(
        [PY, "-m", "flows.cli", "stack", "up", "--prefect-port", str(free_port()),
         "--mlflow-port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=400,
    )
    state_file = root / ".trainflow" / "stack" / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert "export PREFECT_API_URL=http://127.0.0.1:" in up.stdout
        assert "export MLFLOW_TRACKING_URI=http://localhost:" in up.stdout
        pg_data = Path(state["pg"]["dir"]) / "data"
        state["postmaster"] = int((pg_data / "postmaster.pid").read_text().split()[0])
        status = subprocess.run([PY, "-m", "flows.cli", "stack", "status"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and status.stdout.count("healthy") == 2, status.stdout
        assert "postgres  running" in status.stdout and "worker" in status.stdout
        yield state
    finally:
        down = subprocess.run([PY, "-m", "flows.cli", "stack", "down"], env=env,
                              capture_output=True, text=True, timeout=180)
        pids = [p["pid"] for p in (state or {}).get("pieces", {}).values()]
        postmaster = (state or {}).get("postmaster")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            any(_group_alive(p) for p in pids)
            or (postmaster and Path(f"/proc/{postmaster}").exists())
        ):
            time.sleep(0.2)
        left = [p for p in pids if _group_alive(p)]
        for p in left:  # do not leave them running even when the test fails
            os.killpg(p, 9)
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert not left, f"stack down left process groups {left}"
        assert not (postmaster and Path(f"/proc/{postmaster}").exists()), "postgres still up"


def _client_env(stack: dict, project: Path, **extra: str) -> dict[str, str]:
    return _env(project, PREFECT_API_URL=stack["pieces"]["prefect"]["url"],
                MLFLOW_TRACKING_URI=stack["pieces"]["mlflow"]["url"], **extra)


def _mlflow(stack: dict):
    from mlflow import MlflowClient

    uri = stack["pieces"]["mlflow"]["url"]
    return MlflowClient(uri, uri)


def test_two_pipelines_at_once_share_the_registry(stack: dict) -> None:
    name = "stack-pipe"
    projects = [_folder("trainflow-team-a-"), _folder("trainflow-team-b-")]
    procs = [
        subprocess.Popen(
            [PY, "-m", "flows.cli", "run", "--set", "trainer.max_epochs=2",
             "--set", f"trainer.seed={seed}", "--set", f"registry.model_name={name}"],
            env=_client_env(stack, project), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for seed, project in zip((1, 2), projects)
    ]
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for project in projects:
            shutil.rmtree(project, ignore_errors=True)
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    # neither run started a temporary Prefect API of its own: both flow runs are on the server
    assert all("registry stack-pipe v" in o[0] for o in outs), [o[0] for o in outs]

    client = _mlflow(stack)
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.version for v in versions) == ["1", "2"]  # none lost, none duplicated
    accs = {v.version: float(v.tags["metric.test_acc"]) for v in versions}
    champ = str(client.get_model_version_by_alias(name, "champion").version)
    assert accs[champ] == max(accs.values())
    from prefect.client.orchestration import get_client

    run_ids = set()
    for v in versions:
        for key in ("data_hash", "config_hash", "code_version", "flow_run_id"):
            assert v.tags.get(f"trainflow.{key}"), (v.version, key)
        assert json.loads(v.tags["trainflow.promotion_decision"])["version"] == v.version
        assert client.get_run(v.run_id).info.status == "FINISHED"
        run_ids.add(v.tags["trainflow.flow_run_id"])
    assert len(run_ids) == 2
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": stack["pieces"]["prefect"]["url"]}):
        with get_client(sync_client=True) as pc:
            for rid in run_ids:  # the lineage's flow runs are recorded on the team server
                assert pc.read_flow_run(rid).state.is_completed()


_RACE = textwrap.dedent(
    """
    import json, pathlib, sys, time
    import mlflow, prefect  # what promote imports lazily: loaded before the start signal
    import tasks.registry.promotion as promotion
    read_champion = promotion.alias_version
    def read_then_hold(*args, **kwargs):  # widens the window between reading and writing
        current = read_champion(*args, **kwargs)
        time.sleep(float(sys.argv[4]))
        return current
    promotion.alias_version = read_then_hold
    pathlib.Path(sys.argv[5]).touch()  # imported
    while not pathlib.Path(sys.argv[3]).exists():  # start together, after the imports
        time.sleep(0.01)
    d = promotion.promote(sys.argv[1], sys.argv[2], "acc", "max", 0.0)
    print(json.dumps({"version": d.version, "promoted": d.promoted}))
    """
)


def test_promotion_race_across_project_folders(stack: dict) -> None:
    """Two promote calls whose processes share only the servers (own project folder, own temp
    folder: no common file to lock) leave the champion on the better version."""
    client = _mlflow(stack)
    src = client.search_model_versions("name = 'stack-pipe'")
    assert src, "needs the versions the pipeline test registered"
    name = "stack-race"
    client.create_registered_model(name)
    made = {}
    for acc in ("0.80", "0.90"):
        mv = client.create_model_version(name, src[0].source, run_id=src[0].run_id,
                                         model_id=src[0].source.removeprefix("models:/"),
                                         tags={"metric.acc": acc,
                                               "trainflow.export_verified": "true"})
        made[acc] = str(mv.version)
    folders = [_folder("trainflow-race-") for _ in range(2)]
    go = folders[0] / "go"
    # both read "no champion" at once without a shared lock: the better one (held 0.5 s) writes
    # first, the worse one (held 3 s) overwrites it
    procs = [
        subprocess.Popen(
            [PY, "-c", _RACE, name, made[acc], str(go), hold, str(folder / "ready")],
            env=_client_env(stack, folder, TMPDIR=str(folder)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for (acc, hold), folder in zip((("0.80", "3.0"), ("0.90", "0.5")), folders)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((f / "ready").exists() for f in folders):  # both have imported
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.stderr.read()[-3000:] for p in procs if p.poll() is not None]
            time.sleep(0.1)
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    assert str(client.get_model_version_by_alias(name, "champion").version) == made["0.90"]
    for v in made.values():  # both decisions recorded
        record = json.loads(client.get_model_version(name, v).tags["trainflow.promotion_decision"])
        assert record["version"] == v


def test_deployment_on_the_stack_pool_runs_and_registers(stack: dict) -> None:
    """`prefect deploy` of deployments/prefect.yaml onto the stack; a run of it, carried out by
    the stack's worker, registers a version whose lineage names that flow run."""
    import httpx

    api = stack["pieces"]["prefect"]["url"]
    deployer = _folder("trainflow-deployer-")
    try:
        res = subprocess.run([PY, "-m", "prefect", "--no-prompt", "deploy", "--all",
                              "--prefect-file", "deployments/prefect.yaml"],
                             env=_client_env(stack, deployer), cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    finally:
        shutil.rmtree(deployer, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    dep = httpx.get(f"{api}/deployments/name/training-pipeline/nightly", timeout=10).json()
    assert dep["work_pool_name"] == "trainflow"
    params = {"config": None, "overrides": ["trainer.max_epochs=2", "trainer.seed=3",
                                            "registry.model_name=stack-deploy"]}
    resp = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run",
                      json={"parameters": params}, timeout=30)
    assert resp.status_code == 201, resp.text[-2000:]
    run_id = resp.json()["id"]
    deadline = time.monotonic() + 600
    state = None
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    log = Path(stack["pieces"]["worker"]["log"]).read_text(errors="replace")[-4000:]
    assert state == "COMPLETED", log
    versions = _mlflow(stack).search_model_versions("name = 'stack-deploy'")
    assert [v.tags["trainflow.flow_run_id"] for v in versions] == [run_id]
