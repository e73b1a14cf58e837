"""Once through a real `mlflow server` on 127.0.0.1, started by `run_ui` (what `trainflow ui`
runs): logger, register, promote and load_champion over HTTP; the server is always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ui_process import printed_url

from tests.ports import free_port
from trainer.loggers.mlflow_store import TrackingUnreachable, check_reachable

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture
def ui_server(tmp_path: Path):
    port = free_port()
    uri = f"sqlite:///{tmp_path}/srv/mlflow.db"
    code = (
        f"from flows.tracking import run_ui; raise SystemExit(run_ui(port={port}, "
        f"tracking_uri={uri!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url, out = printed_url(proc, time.monotonic() + 150)
        assert url == f"http://localhost:{port}", out
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    with pytest.raises(TrackingUnreachable):  # the server went away with run_ui
        check_reachable(url or f"http://localhost:{port}", timeout=2)


def test_logger_and_registry_through_a_real_server(ui_server: str, exports) -> None:
    from mlflow import MlflowClient

    from tasks.registry import load_champion, promote, register_model
    from trainer.loggers.mlflow import MLflowLogger

    assert check_reachable(ui_server) == ui_server
    logger = MLflowLogger("over-http", tracking_uri=ui_server, log_plots=False)
    logger.log_hyperparams({"lr": 0.01, "model": {"hidden": 16}})
    for step in range(5):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.finalize("success")
    client = MlflowClient(ui_server, ui_server)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.hidden"] == "16"
    assert sorted(m.step for m in client.get_metric_history(logger.run_id, "loss")) == [
        0,
        1,
        2,
        3,
        4,
    ]
    exp = exports[0]
    rv = register_model(
        "http-model",
        exp.onnx,
        torchscript_path=exp.torchscript,
        input_example=exp.example,
        eval_metrics={"acc": 0.9},
        export_metrics={"verified": True},
        tracking_uri=ui_server,
        run_id=logger.run_id,
    )
    assert rv.created and client.get_run(logger.run_id).info.status == "FINISHED"
    assert promote("http-model", rv.version, "acc", tracking_uri=ui_server).promoted
    sess = load_champion("http-model", tracking_uri=ui_server)
    x = torch.randn(3, 8)
    (out,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, exp.module(x).numpy(), rtol=1e-5, atol=1e-5)
