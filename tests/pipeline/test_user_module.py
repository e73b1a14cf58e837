"""A user's own code beside their config (no PYTHONPATH): trained under DDP, its edits retrain
from train onward only; a DataModule example (images, not rows) exports and registers; bad
input ends in one named error as stderr's last line with nothing registered or half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_predict_project import (
    REPO,
    last_line,
    make_project,
    registered_models,
    stage_states,
    trainflow,
)

pytestmark = pytest.mark.slow


@pytest.mark.ddp
def test_module_beside_config_under_ddp_and_its_edit_retrains_only(
    tmp_path: Path, prefect_api: str
) -> None:
    config = make_project(tmp_path, "classification", "tiny-ddp")
    ddp = ["--set", "trainer.devices=2", "--set", "trainer.strategy=ddp",
           "--set", "trainer.max_epochs=2"]
    first = trainflow(tmp_path, "run", str(config), *ddp, api=prefect_api)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "tiny-ddp v1: promoted" in first.stdout
    module = tmp_path / "tiny_models.py"
    module.write_text(module.read_text().replace("nn.Linear(num_features, 16), nn.ReLU(), "
                                                 "nn.Linear(16, num_classes)",
                                                 "nn.Linear(num_features, 12), nn.ReLU(), "
                                                 "nn.Linear(12, num_classes)"))
    second = trainflow(tmp_path, "run", str(config), *ddp, api=prefect_api)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert stage_states(first.stdout)["train"] == "Completed"
    assert stage_states(second.stdout) == {"prepare_data": "Cached", **dict.fromkeys(
        ["train", "evaluate", "export", "register", "promote"], "Completed")}
    assert len(list((tmp_path / ".trainflow" / "stages" / "train").iterdir())) == 2


def test_datamodule_example_exports_registers_and_predicts(
    tmp_path: Path, prefect_api: str
) -> None:
    res = trainflow(tmp_path, "run", str(REPO / "configs" / "digits_cnn.yaml"),
                    "--set", "trainer.max_epochs=2", "--set", "export.torchscript=false",
                    api=prefect_api)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "digits-cnn v1: promoted" in res.stdout
    [onnx] = (tmp_path / ".trainflow" / "stages" / "export").glob("*/model.onnx")
    import onnx as onnx_lib

    dims = onnx_lib.load(str(onnx)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]  # images, not rows
    out = tmp_path / "pred.parquet"
    res = trainflow(tmp_path, "predict", "--model", "digits-cnn", "--input",
                    str(REPO / "models" / "data" / "digits.parquet"), "--output", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    import pandas as pd

    truth = pd.read_parquet(REPO / "models" / "data" / "digits.parquet")["label"]
    assert (pd.read_parquet(out)["prediction"] == truth).mean() > 0.5


def _assert_nothing_left(project: Path) -> None:
    assert registered_models(project) == []
    stages = project / ".trainflow" / "stages"
    leftovers = [p for p in stages.glob("*/*")] if stages.exists() else []
    assert [p for p in leftovers if p.name.startswith(".tmp")] == []


def test_empty_table_says_no_rows(tmp_path: Path, prefect_api: str) -> None:
    config = make_project(tmp_path, "classification", "tiny-empty")
    table = tmp_path / "table.csv"
    table.write_text(table.read_text().splitlines()[0] + "\n")  # the header alone
    res = trainflow(tmp_path, "run", str(config), api=prefect_api)
    assert res.returncode != 0
    assert last_line(res.stderr) == "error: data.path: table.csv holds no rows"
    assert "Traceback" not in res.stderr  # it went to the log file named above it
    log = Path(res.stderr.splitlines()[-2].removeprefix("full log: "))
    assert "Traceback" in log.read_text()
    _assert_nothing_left(tmp_path)
    assert not list((tmp_path / ".trainflow" / "stages" / "prepare_data").glob("*"))


def test_missing_user_module_is_named(tmp_path: Path, prefect_api: str) -> None:
    config = make_project(tmp_path, "classification", "tiny-missing")
    (tmp_path / "tiny_models.py").unlink()
    res = trainflow(tmp_path, "run", str(config), api=prefect_api)
    assert res.returncode != 0
    assert last_line(res.stderr).startswith("error: model.class_path: cannot import 'tiny_models'")
    _assert_nothing_left(tmp_path)
    assert not (tmp_path / ".trainflow" / "stages" / "train").exists()


def test_verbose_shows_the_logs(tmp_path: Path, prefect_api: str) -> None:
    config = make_project(tmp_path, "classification", "tiny-verbose")
    (tmp_path / "table.csv").write_text("radius,texture,colour,diagnosis\n")
    res = trainflow(tmp_path, "--verbose", "run", str(config), api=prefect_api)
    assert res.returncode != 0
    assert "Traceback" in res.stderr or "prepare_data" in res.stderr  # Prefect's own lines
    assert last_line(res.stderr) == "error: data.path: table.csv holds no rows"
    assert not (tmp_path / ".trainflow" / "logs").exists()


def test_early_stopping_on_a_key_the_module_never_logs_is_named(
    tmp_path: Path, prefect_api: str
) -> None:
    config = make_project(tmp_path, "classification", "tiny-es")
    module = tmp_path / "tiny_models.py"
    module.write_text(module.read_text().replace('self.log("val_loss"', 'self.log("val_ce"'))
    # the checkpoint follows what is logged; early stopping keeps its default monitor, val_loss
    res = trainflow(tmp_path, "run", str(config), "--set", "trainer.checkpoint.monitor=val_ce",
                    "--set", "trainer.max_epochs=2", api=prefect_api)
    assert res.returncode != 0
    line = last_line(res.stderr)
    assert line.startswith("error: trainer.early_stopping.monitor: 'val_loss' is not logged by "
                           "tiny_models:TinyClassifier"), res.stderr[-3000:]
    assert "val_ce" in line and "KeyError" not in line
    _assert_nothing_left(tmp_path)
