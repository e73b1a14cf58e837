"""One version per model (issue 15): exports are byte-identical, identical content is never
registered twice, and a registration killed half-way is completed by the rerun."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from tasks.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SMALL = ["trainer.max_epochs=1", "model.kwargs={hidden: 16}",
         "retries.train.delays=[0]", "retries.evaluate.delays=[0]"]


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(REPO / "configs" / "default.yaml", [*SMALL, *overrides])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_model_exports_to_identical_bytes(tmp_path: Path) -> None:
    from models.digits import DigitsMLP
    from trainer.export import to_onnx, to_torchscript

    torch.manual_seed(0)
    module = DigitsMLP().eval()
    digests = []
    for i in range(2):  # the second export in one process used to get other type names
        out = tmp_path / str(i)  # ... and the temp file's name inside the TorchScript archive
        out.mkdir()
        to_onnx(module, out / "model.onnx")
        to_torchscript(module, out / "model.ts", method="trace")
        digests.append((_sha(out / "model.onnx"), _sha(out / "model.ts")))
    assert digests[0] == digests[1]
    loaded = torch.jit.load(str(tmp_path / "1" / "model.ts"))  # the patched archive still loads
    x = torch.randn(3, 64)
    assert torch.equal(loaded(x), module(x))


@pytest.mark.usefixtures("prefect_api")
def test_deleted_stage_folders_and_killed_registration_still_give_one_version(
    project: Path,
) -> None:
    from flows.pipeline import training_pipeline

    cfg = _cfg()
    first = training_pipeline(cfg)
    assert first.registered.version == "1"
    home = project / ".trainflow"
    shutil.rmtree(home / "stages" / "export")  # what the issue did: v2 of an identical model
    shutil.rmtree(home / "results")
    second = training_pipeline(cfg)
    assert second.exported.onnx_sha256 == first.exported.onnx_sha256
    assert second.exported.torchscript_sha256 == first.exported.torchscript_sha256
    assert second.registered.version == "1"

    # What a kill leaves between "version created" and "aliases set", or during log_model:
    # no challenger alias, no completion tag, the training run RUNNING.
    uri = cfg.tracking.uri or f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    client.delete_registered_model_alias("digits-mlp", "challenger")
    client.delete_model_version_tag("digits-mlp", "1", "trainflow.registration")
    run_id = first.trained.mlflow_run_id
    client.set_tag(run_id, "trainflow.status_before_register", "FINISHED")
    client.update_run(run_id, status="RUNNING")
    for record in (home / "results").glob("register-*"):
        record.unlink()
    training_pipeline(cfg)
    versions = client.search_model_versions("name = 'digits-mlp'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias("digits-mlp", "challenger").version) == "1"
    assert client.get_run(run_id).info.status == "FINISHED"
