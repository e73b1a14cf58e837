"""A user's project as the predict, serve and user-module tests use it (helpers, no tests here).

A folder holding a seeded table (text labels and a category column, or a numeric target), the
user's own TrainModules in ``tiny_models.py`` beside ``config.yaml`` (no PYTHONPATH for it), and
the ``trainflow`` CLI run in a new process as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

TINY_MODELS = '''
"""The user's own models, beside their config."""
import torch
from torch import nn

from trainer.metrics import Accuracy, MeanSquaredError
from trainer.module import TrainModule


class TinyClassifier(TrainModule):
    def __init__(self, num_features: int, num_classes: int, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, 16), nn.ReLU(), nn.Linear(16, num_classes))
        self.loss_fn = nn.CrossEntropyLoss()
        self.test_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.example_input_array = torch.zeros(2, num_features)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.loss_fn(self(x), y), on_epoch=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc.update(self(x), y)
        self.log("test_acc", self.test_acc, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class TinyRegressor(TrainModule):
    def __init__(self, num_features: int, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(num_features, 1)
        self.test_mse = MeanSquaredError()
        self.example_input_array = torch.zeros(2, num_features)

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), on_epoch=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_mse.update(self(x), y)
        self.log("test_mse", self.test_mse, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
'''


def write_table(path: Path, task: str, n: int = 400, seed: int = 0) -> None:
    """A seeded table: radius, texture, colour (category) and diagnosis (M/B) or target."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "radius": rng.normal(1.0, 0.5, n).round(3),
        "texture": rng.normal(0.0, 1.0, n).round(3),
        "colour": rng.choice(["red", "blue", "green"], n),
    })
    score = df.radius - 1.0 + df.texture + (df.colour == "red") * 1.0
    if task == "classification":
        df["diagnosis"] = np.where(score > 0.3, "M", "B")
    else:
        df["target"] = (2.0 * score + rng.normal(0, 0.1, n)).round(4)
    df.to_csv(path, index=False)


def make_project(root: Path, task: str = "classification", name: str = "tiny") -> Path:
    """``root`` with table.csv, tiny_models.py and config.yaml; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    write_table(root / "table.csv", task)
    (root / "tiny_models.py").write_text(TINY_MODELS)
    if task == "classification":
        data = "{path: table.csv, label: diagnosis, categorical: [colour]}"
        model = "tiny_models:TinyClassifier"
        evaluation = "{metrics: [accuracy], gate: {metric: test_acc, mode: max}}"
    else:
        data = "{path: table.csv, label: target, categorical: [colour], task: regression}"
        model = "tiny_models:TinyRegressor"
        evaluation = "{metrics: [mse], gate: {metric: test_mse, mode: min}}"
    (root / "config.yaml").write_text(
        f"data: {data}\n"
        f"model: {{class_path: '{model}'}}\n"
        "trainer: {max_epochs: 8, batch_size: 512, checkpoint: {monitor: val_loss, mode: min}}\n"
        f"evaluation: {evaluation}\n"
        "export: {torchscript: false}\n"
        f"registry: {{model_name: {name}}}\n"
        "retries: {train: {retries: 0}, evaluate: {retries: 0}, registry: {retries: 0}}\n"
    )
    return root / "config.yaml"


def env(project: Path, api: str | None = None) -> dict[str, str]:
    """The environment of a user in ``project`` (our own variables cleared), with
    ``PREFECT_API_URL=api`` when given (a running Prefect server instead of the embedded one)."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
    out.update(PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               TRAINFLOW_PROJECT_DIR=str(project),
               TRAINFLOW_CACHE_DIR=os.environ.get("TRAINFLOW_CACHE_DIR", str(project / "cache")),
               PYTHONPATH=str(REPO),  # trainflow itself; never the project folder
               OMP_NUM_THREADS="1")
    if api is not None:
        out["PREFECT_API_URL"] = api
    return out


def trainflow(project: Path, *args: str, api: str | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """``trainflow ARGS`` in a new process, in ``project``; its flows report to the Prefect API
    at ``api`` (conftest's ``prefect_api``) or, without one, to the embedded one it starts."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env(project, api),
                          cwd=project, capture_output=True, text=True, timeout=timeout)


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project}/.trainflow/mlflow.db"


def champion_tags(project: Path, name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    uri = tracking_uri(project)
    return dict(MlflowClient(uri, uri).get_model_version_by_alias(name, "champion").tags)


def held_out(project: Path, path: Path) -> None:
    """The test split, back in the user's terms (category strings, labels), written to ``path``
    (parquet): rows the model never trained on."""
    import pandas as pd

    from tasks.prepare_data import load_split
    from tasks.schema import read_schema
    from tasks.types import DatasetRef

    [manifest] = (project / ".trainflow" / "stages" / "prepare_data").glob("*/dataset.json")
    ref = DatasetRef.model_validate_json(manifest.read_text())
    schema = read_schema(ref.schema_path)
    x, y = load_split(ref, "test")
    cols = {}
    for j, f in enumerate(schema["features"]):
        cats = f["categories"]
        cols[f["name"]] = [cats[int(c)] for c in x[:, j]] if cats else x[:, j]
    classes = schema["classes"]
    cols[schema["label"]] = [classes[int(c)] for c in y] if classes else y
    pd.DataFrame(cols).to_parquet(path, index=False)


def last_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def stage_states(stdout: str) -> dict[str, str]:
    """Each stage's Prefect state as ``trainflow run`` printed it in its summary table."""
    stages = "prepare_data|train|evaluate|export|register|promote"
    return dict(re.findall(rf"^\W*({stages})\W+(\w+)", stdout, re.MULTILINE))


def registered_models(project: Path) -> list[str]:
    db = project / ".trainflow" / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return [r[0] for r in con.execute("select name from registered_models")]
        except sqlite3.OperationalError:
            return []


def stats(path: Path) -> dict:
    return json.loads(path.read_text())
