"""The registered version served the MLflow way answers what `trainflow predict` answers:
``mlflow.pyfunc.load_model("models:/NAME@champion")`` and a real ``mlflow models serve``
process on 127.0.0.1 (an HTTP POST to /invocations), labels in the user's values."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from test_predict_project import env, tracking_uri, trainflow

pytestmark = pytest.mark.slow

NAME = "tiny-clf"  # conftest's tiny_classifier, trained once per session
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def project(tiny_classifier: Path) -> Path:
    """The session's trained project, with the held-out rows in another column order
    (rows.csv) and what `trainflow predict` answers for them (cli.parquet)."""
    project = tiny_classifier
    rows = pd.read_parquet(project / "held_out.parquet")
    rows[["texture", "colour", "radius"]].to_csv(project / "rows.csv", index=False)  # reordered
    res = trainflow(project, "predict", "--model", NAME, "--input", str(project / "rows.csv"),
                    "--output", str(project / "cli.parquet"), "--probabilities")
    assert res.returncode == 0, res.stderr[-3000:]
    return project


def _serving_env(project: Path) -> dict[str, str]:
    out = env(project)
    out["MLFLOW_TRACKING_URI"] = tracking_uri(project)
    out["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), out.get("PATH", "")])
    return out


PYFUNC = """
import sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/{name}@champion")
rows = pd.read_csv(sys.argv[1])
model.predict(rows, params={{"probabilities": True}}).to_parquet(sys.argv[2])
"""


def test_pyfunc_answers_like_trainflow_predict(project: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", PYFUNC.format(name=NAME), str(project / "rows.csv"),
         str(project / "pyfunc.parquet")],
        env=_serving_env(project), cwd=project, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cli = pd.read_parquet(project / "cli.parquet")
    pyfunc = pd.read_parquet(project / "pyfunc.parquet")
    pd.testing.assert_frame_equal(pyfunc, cli)
    assert set(cli["prediction"]) == {"M", "B"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_mlflow_models_serve_answers_like_trainflow_predict(project: Path) -> None:
    port = _free_port()
    log = open(project / "serve.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=_serving_env(project), cwd=project, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: uvicorn is its child
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (project / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(0.5)
        rows = pd.read_csv(project / "rows.csv")
        split = json.loads(rows.to_json(orient="split", index=False))
        url = f"http://127.0.0.1:{port}/invocations"
        plain = _post(url, {"dataframe_split": split})["predictions"]
        full = _post(url, {"dataframe_split": split, "params": {"probabilities": True}})
        renamed = rows.rename(columns={"radius": "radius_cm"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(url, {"dataframe_split": json.loads(renamed.to_json(orient="split",
                                                                      index=False))})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    cli = pd.read_parquet(project / "cli.parquet")
    assert [r["prediction"] for r in plain] == cli["prediction"].tolist()
    served = pd.DataFrame(full["predictions"])[list(cli.columns)]
    pd.testing.assert_frame_equal(served, cli, check_dtype=False)
    assert refused.value.code in (400, 422) and "radius" in refused.value.read().decode()
