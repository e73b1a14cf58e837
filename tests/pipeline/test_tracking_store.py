"""New MLflow SQLite stores come from a migrated template (not MLflow's migrations each time),
and registering a model pins its requirements without scanning every installed package."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

import pytest


def _revision(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("select version_num from alembic_version").fetchone()[0]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("TRAINFLOW_CACHE_DIR", str(folder))
    monkeypatch.delenv("TRAINFLOW_STORE_TEMPLATE", raising=False)
    return folder


def test_new_stores_are_copies_of_one_template(cache: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from trainer.loggers.mlflow_store import (
        check_reachable,
        get_or_create_experiment,
        seed_sqlite_store,
    )

    a, b = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    uri_a = check_reachable(f"sqlite:///{a}")
    templates = list(cache.glob("mlflow-store-*.db"))
    assert len(templates) == 1 and a.is_file()
    made = templates[0].stat().st_mtime_ns
    uri_b = check_reachable(f"sqlite:///{b}")
    assert templates[0].stat().st_mtime_ns == made  # reused, not remade
    assert _revision(a) == _revision(b) == _revision(templates[0])

    # A seeded store is a full MLflow store: experiments, runs, metrics, the registry.
    client = MlflowClient(uri_b, uri_b)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    eid = get_or_create_experiment(client, "exp", uri_b)
    run = client.create_run(eid)
    client.log_metric(run.info.run_id, "m", 1.5)
    client.create_registered_model("reg")
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    assert client.get_registered_model("reg").name == "reg"
    assert MlflowClient(uri_a, uri_a).search_registered_models() == []  # stores are separate

    # An existing store is never replaced.
    before = b.read_bytes()
    assert seed_sqlite_store(b) is False
    assert b.read_bytes() == before


def test_template_can_be_turned_off(cache: Path, tmp_path: Path, monkeypatch) -> None:
    from trainer.loggers.mlflow_store import check_reachable, store_template

    monkeypatch.setenv("TRAINFLOW_STORE_TEMPLATE", "0")
    assert store_template() is None
    check_reachable(f"sqlite:///{tmp_path / 'plain.db'}")  # MLflow creates it itself
    assert (tmp_path / "plain.db").is_file() and not cache.exists()


def test_unwritable_cache_falls_back_to_mlflow(tmp_path: Path, monkeypatch) -> None:
    from trainer.loggers.mlflow_store import check_reachable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TRAINFLOW_CACHE_DIR", str(blocker / "sub"))
    uri = check_reachable(f"sqlite:///{tmp_path / 'x.db'}")
    assert uri.endswith("x.db") and (tmp_path / "x.db").is_file()


def test_register_pins_requirements_and_leaves_mlflow_state_alone(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    import torch
    from mlflow.artifacts import download_artifacts
    from mlflow.utils import requirements_utils
    from torch import nn

    from tasks.registry import register_model

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3)).eval()
    onnx_path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 4),), str(onnx_path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "b"}})
    uri = f"sqlite:///{tmp_path / 'reg.db'}"
    assert requirements_utils._MODULES_TO_PACKAGES is None
    rv = register_model("m", onnx_path, eval_metrics={"acc": 0.5}, tracking_uri=uri)
    assert requirements_utils._MODULES_TO_PACKAGES is None  # MLflow builds its own map later
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    local = download_artifacts(artifact_uri=f"models:/m/{rv.version}",
                               dst_path=str(tmp_path / "dl"), tracking_uri=uri)
    reqs = (Path(local) / "requirements.txt").read_text().split()
    for pkg in ("onnx", "onnxruntime", "numpy"):
        assert f"{pkg}=={importlib.metadata.version(pkg)}" in reqs, reqs
