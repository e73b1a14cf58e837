"""Faults in the stage cache (issue 15): the store moved or changed, a tampered result record.

Each cached stage output is checked against the world before it is served, and a record that is
not plain JSON of our own stage type is refused without being decoded.
"""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SMALL = ["trainer.max_epochs=1", "model.kwargs={hidden: 16}", "export.torchscript=false",
         "retries.train.delays=[0]", "retries.evaluate.delays=[0]"]

pytestmark = pytest.mark.usefixtures("prefect_api")


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(REPO / "configs" / "default.yaml", [*SMALL, *overrides])


def _run(cfg: PipelineConfig):
    from flows.pipeline import training_pipeline

    return training_pipeline(cfg)


def _versions(uri: str, name: str = "digits-mlp") -> list[str]:
    client = MlflowClient(uri, uri)
    return sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))


def test_moved_store_then_rerun_registers_v1_in_the_new_store(project: Path) -> None:
    first = _run(_cfg())
    assert first.registered.version == "1"
    db = project / ".trainflow" / "mlflow.db"
    db.rename(project / "old-mlflow.db")  # what "delete or move the file" leads a user to do

    second = _run(_cfg())
    states = {k: v.state for k, v in second.stages.items()}
    assert states["prepare_data"] == "Cached"
    assert states["train"] == "Completed" and states["register"] == "Completed"
    assert second.registered.version == "1" and second.registered.promoted
    uri = f"sqlite:///{db}"
    assert _versions(uri) == ["1"]
    MlflowClient(uri, uri).get_run(second.trained.mlflow_run_id)  # the run is in the new store


def test_changed_tracking_uri_recomputes_what_writes_to_the_store(project: Path) -> None:
    _run(_cfg())
    other = f"sqlite:///{project / 'other' / 'mlflow.db'}"
    second = _run(_cfg(f"tracking.uri={other}"))
    states = {k: v.state for k, v in second.stages.items()}
    assert states["prepare_data"] == "Cached"
    assert states["register"] == "Completed" and second.registered.version == "1"
    assert _versions(other) == ["1"]
    MlflowClient(other, other).get_run(second.trained.mlflow_run_id)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this creates the marker file
        return (open, (str(self.marker), "w"))


def _prepare_only(cfg: PipelineConfig) -> str:
    from prefect import flow

    from flows.pipeline import _with_policy
    from tasks.prepare_data import prepare_data
    from tasks.settings import home_dir

    @flow
    def only_prepare() -> str:
        st = _with_policy(prepare_data, cfg.retries.prepare_data, home_dir())(
            cfg.data, str(home_dir()), return_state=True)
        st.result()
        return st.name

    return only_prepare()


@pytest.mark.parametrize("tamper", ["pickle", "foreign-class", "decoder"])
def test_tampered_result_record_runs_no_code_and_is_recomputed(
    project: Path, tmp_path: Path, tamper: str
) -> None:
    cfg = _cfg()
    assert _prepare_only(cfg) == "Completed"
    records = list((project / ".trainflow" / "results").glob("prepare_data-*"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["metadata"]["serializer"]["type"] == "json"  # what we write is JSON
    marker = tmp_path / "marker"
    if tamper == "pickle":
        record["metadata"]["serializer"] = {"type": "pickle", "picklelib": "pickle"}
        record["result"] = base64.b64encode(pickle.dumps(_Evil(marker))).decode()
    elif tamper == "foreign-class":
        record["result"] = json.dumps({"__class__": "pathlib.Path", "data": str(marker)})
    else:
        record["metadata"]["serializer"]["object_decoder"] = "builtins.print"
    records[0].write_text(json.dumps(record))

    assert _prepare_only(cfg) == "Completed"  # refused and recomputed, not served
    assert not marker.exists()
    assert _prepare_only(cfg) == "Cached"  # the fresh record is served again
