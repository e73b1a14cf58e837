"""Fixtures for the MLflow tests: a real SQLite store in a temp folder and tiny real exports."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn


@dataclasses.dataclass
class Export:
    """A tiny model exported to ONNX and TorchScript, with its weights and an input sample."""

    module: nn.Module
    onnx: Path
    torchscript: Path
    weights: Path
    example: torch.Tensor


def make_export(folder: Path, seed: int) -> Export:
    """MLP 8→16→3 with weights from ``seed``, exported with torch.onnx / torch.jit directly."""
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    example = torch.randn(4, 8)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, ts_path, w_path = folder / "model.onnx", folder / "model.ts", folder / "weights.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(onnx_path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
        torch.jit.script(module).save(str(ts_path))
    torch.save(module.state_dict(), w_path)
    return Export(module, onnx_path, ts_path, w_path, example)


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> list[Export]:
    """Four different tiny exports (different weights, so different content hashes)."""
    root = tmp_path_factory.mktemp("exports")
    return [make_export(root / f"m{i}", seed=i) for i in range(4)]


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real SQLite MLflow store for the session (tests use distinct names in it)."""
    from trainer.loggers.mlflow_store import check_reachable

    root = tmp_path_factory.mktemp("mlflow")
    return check_reachable(f"sqlite:///{root}/mlflow.db")


@pytest.fixture(autouse=True)
def _no_repo_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the repo's .trainflow/: the project folder is the test's tmp_path."""
    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
