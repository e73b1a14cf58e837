"""Pipeline test fixtures: an isolated project folder and one trained user project per session
(the session's Prefect API, ``prefect_api``, is in ../conftest.py: the DDP tests use it too).

TRAINFLOW_PROJECT_DIR points into a session temp folder before prefect is imported (PREFECT_HOME
too: ../conftest.py), so nothing lands in the repo's own ``.trainflow/``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="trainflow-pipeline-tests-"))
atexit.register(shutil.rmtree, _SESSION_TMP, True)
os.environ["TRAINFLOW_PROJECT_DIR"] = str(_SESSION_TMP / "project")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "data" / "digits.parquet"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project folder: the pipeline's ``.trainflow/`` goes inside it."""
    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path))
    # MLflow's fluent API writes MLFLOW_TRACKING_URI into os.environ when a URI is set or
    # restored; pin it to this project so no test sees another's store (or the CWD's mlflow.db).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/.trainflow/mlflow.db")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """One user project, trained and registered once per session by ``trainflow run``: its
    champion ``tiny-clf`` classifies M/B from radius, texture and colour (the user's own module),
    ``held_out.parquet`` holds the test split in the user's terms. The stage folders are removed
    (predict and serving read the registry alone). Shared by test_predict.py and test_serve.py,
    which only read the registry and write files of their own names beside it."""
    from test_predict_project import held_out, make_project, trainflow

    project = tmp_path_factory.mktemp("tiny-clf")
    config = make_project(project, "classification", "tiny-clf")
    res = trainflow(project, "run", str(config), api=prefect_api)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    held_out(project, project / "held_out.parquet")
    shutil.rmtree(project / ".trainflow" / "stages")
    return project
