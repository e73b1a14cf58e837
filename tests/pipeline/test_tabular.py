"""Config-only runs on tables no other test uses: the built-in tabular models, regression end to
end with the gate on r2, the evaluate stage computing what evaluation.metrics names, and the
one-line refusals (a metric that does not fit the task, a model that does not fit the task)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from tasks.config import ConfigError, load_config
from tasks.prepare_data import load_split

pytestmark = pytest.mark.usefixtures("prefect_api")


def _config(folder: Path, *lines: str) -> Path:
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(config: Path):
    from flows.pipeline import training_pipeline

    return training_pipeline(str(config))


def _test_predictions(result) -> tuple[np.ndarray, np.ndarray]:
    """The best checkpoint's outputs on the test split, and the targets (as a user would)."""
    from trainer.module import TrainModule

    module = TrainModule.load_from_checkpoint(str(result.trained.checkpoint)).eval()
    x, y = load_split(result.data, "test")
    with torch.no_grad():
        out = module(torch.from_numpy(np.array(x))).numpy()
    return out, y


def test_classifier_on_a_csv_with_a_config_of_three_keys(project: Path) -> None:
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(project / "wine.csv", index=False)
    cfg = _config(project, "data:", "  path: wine.csv", "  label: target",
                  "evaluation:", "  metrics: [accuracy, f1, precision, recall, auroc]")
    assert load_config(cfg).model.class_path == "models.tabular:TabularClassifier"
    result = _run(cfg)

    m = result.metrics
    assert m["test_acc"] >= 0.9, m  # a linear model gets ~0.95; DigitsMLP's scaling gave 0.67
    assert result.trained.epochs < 200  # early stopping ended the fit before max_epochs (200)
    # every named metric is computed by the stage (the model's test_step logs only test_loss),
    # and equals scikit-learn's figure on the checkpoint's own predictions
    logits, y = _test_predictions(result)
    pred = logits.argmax(1)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    expected = {
        "test_acc": skm.accuracy_score(y, pred),
        "test_f1": skm.f1_score(y, pred, average="macro"),
        "test_precision": skm.precision_score(y, pred, average="macro", zero_division=0),
        "test_recall": skm.recall_score(y, pred, average="macro"),
        "test_auroc": skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-5), key
    assert result.report.gate_metric == "test_acc"
    assert result.registered is not None and result.registered.promoted is True
    assert result.registered.name == "wine"  # no registry.model_name: the data file's stem
    assert result.exported.onnx is not None and result.exported.onnx.exists()


def test_classifier_on_a_parquet_with_text_labels_and_binary_auroc(project: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame["diagnosis"] = np.where(frame.pop("target") == 0, "M", "B")
    frame.to_parquet(project / "cancer.parquet", index=False)
    cfg = _config(project, "data:", "  path: cancer.parquet", "  label: diagnosis",
                  "evaluation: {metrics: [accuracy, auroc], gate: {metric: test_auroc}}",
                  "export: {torchscript: false}")
    result = _run(cfg)

    m = result.metrics
    assert m["test_acc"] >= 0.93 and m["test_auroc"] >= 0.97, m  # logistic regression: 0.99
    logits, y = _test_predictions(result)
    assert logits.shape == (len(y), 2)
    score = torch.softmax(torch.from_numpy(logits), 1).numpy()[:, 1]
    assert m["test_auroc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-6)
    assert result.report.gate_metric == "test_auroc"


def test_regression_end_to_end_on_parquet_with_a_category_and_the_gate_on_r2(
    project: Path,
) -> None:
    rng = np.random.default_rng(7)
    n = 800
    region = rng.choice(["north", "south", "east", "west"], n)
    x = rng.normal(size=(n, 3))
    offset = pd.Series(region).map({"north": -3.0, "south": 0.0, "east": 2.0, "west": 5.0})
    target = 100.0 + 10.0 * (2 * x[:, 0] - x[:, 1] + offset.to_numpy()) + rng.normal(0, 3, n)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "region": region,
                          "price": target})
    frame.to_parquet(project / "prices.parquet", index=False)
    cfg = _config(project, "data:", "  path: prices.parquet", "  label: price",
                  "  task: regression", "  categorical: [region]",
                  "evaluation:", "  metrics: [mse, rmse, mae, r2]",
                  "  gate: {metric: test_r2}")
    assert load_config(cfg).evaluation.gate.mode == "max"
    result = _run(cfg)

    m = result.metrics
    assert m["test_r2"] >= 0.9, m  # the region alone moves the target by 80: it was used
    out, y = _test_predictions(result)
    assert out.shape == (len(y),)  # one value per row, in the target's units
    assert m["test_mse"] == pytest.approx(skm.mean_squared_error(y, out), rel=1e-4)
    assert m["test_rmse"] == pytest.approx(skm.root_mean_squared_error(y, out), rel=1e-4)
    assert m["test_mae"] == pytest.approx(skm.mean_absolute_error(y, out), rel=1e-4)
    assert m["test_r2"] == pytest.approx(skm.r2_score(y, out), abs=1e-5)
    assert result.report.gate_metric == "test_r2" and result.report.gate_value == m["test_r2"]
    assert result.registered is not None and result.registered.promoted is True
    # the exported graph takes raw values and category codes and answers like eager PyTorch
    import onnxruntime as ort

    x_test, _ = load_split(result.data, "test")
    sess = ort.InferenceSession(str(result.exported.onnx), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: np.array(x_test)})[0]
    np.testing.assert_allclose(onnx_out.reshape(-1), out, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evaluation.metrics=[accuracy, r2]"],
         "evaluation.metrics: accuracy does not fit data.task regression (choose from mse, "
         "rmse, mae, r2)"),
        (["evaluation.gate.metric=test_acc"],
         "evaluation.gate.metric: 'test_acc' is not among the metrics the evaluate stage "
         "computes (test_rmse, test_mae, test_r2); add it to evaluation.metrics"),
        (["evaluation.metrics=[mae]", "evaluation.gate.mode=max"],
         "evaluation.gate.mode: max would promote worse models (test_mae is better when "
         "lower); set it to min or remove it"),
    ],
)
def test_metrics_that_do_not_fit_the_task_are_config_errors(
    project: Path, overrides: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    (project / "t.csv").write_text("x,y\n1,2.5\n2,3.5\n")
    cfg = _config(project, "data:", "  path: t.csv", "  label: y", "  task: regression")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, overrides)
    assert str(err.value) == message
    args = ["run", str(cfg)] + [a for o in overrides for a in ("--set", o)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and res.output.strip() == f"error: {message}"
    assert not (project / ".trainflow" / "stages").exists()  # refused before any stage ran


@pytest.mark.parametrize(
    ("class_path", "message"),
    [
        ("models.digits:DigitsMLP",
         "model.class_path: models.digits:DigitsMLP outputs [2, 10] for 2 rows, but data.task "
         "regression needs one value per row (shape [2] or [2, 1]); pick a model for the task "
         "(leave model.class_path unset for the built-in one) or change data.task"),
        ("models.tabular:TabularClassifier",
         "model.class_path: models.tabular:TabularClassifier is a classifier (it needs "
         "num_classes) but data.task is regression; pick a regression model (leave "
         "model.class_path unset for the built-in one) or change data.task"),
    ],
)
def test_a_model_that_does_not_fit_the_task_fails_in_one_line(
    project: Path, class_path: str, message: str
) -> None:
    from tasks.types import StageError

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=list("abcd"))
    frame["y"] = frame["a"] * 2.0
    frame.to_csv(project / "reg.csv", index=False)
    cfg = _config(project, "data:", "  path: reg.csv", "  label: y", "  task: regression",
                  "model:", f"  class_path: {class_path}", "registry: {enabled: false}",
                  "retries: {train: {retries: 0}}")
    with pytest.raises(StageError) as err:
        _run(cfg)
    assert str(err.value) == message


def test_the_example_table_config_gets_the_regressor_and_its_metrics() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "table.yaml")
    assert cfg.model.class_path == "models.tabular:TabularRegressor"
    assert cfg.evaluation.metrics == ["rmse", "mae", "r2"]
    assert (cfg.evaluation.gate.metric, cfg.evaluation.gate.mode) == ("test_r2", "max")
    assert cfg.trainer.early_stopping is not None and cfg.trainer.early_stopping.patience == 10


@pytest.mark.ddp
def test_regression_metrics_under_ddp_cover_the_whole_test_split(project: Path) -> None:
    from tasks.evaluate import run_evaluation

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    frame["y"] = 5.0 * frame["a"] - 2.0 * frame["b"] + rng.normal(0, 0.5, 400)
    frame.to_csv(project / "lin.csv", index=False)
    cfg = _config(project, "data:", "  path: lin.csv", "  label: y", "  task: regression",
                  "trainer: {devices: 2, strategy: ddp, max_epochs: 10}",
                  "evaluation: {metrics: [mae, r2]}", "registry: {enabled: false}",
                  "export: {onnx: false, torchscript: false}")
    result = _run(cfg)
    assert result.metrics["test_r2"] > 0.8, result.metrics
    # the two ranks' metric states were synced: the figures are the whole split's, as one
    # process computes them on the same checkpoint (an even test split: no padded rows)
    assert result.data.splits["test"].rows % 2 == 0
    one = run_evaluation(result.trained, result.data, load_config(cfg, ["trainer.devices=1"]),
                         "single", track=False)
    for key in ("test_mae", "test_r2"):
        assert one.metrics[key] == pytest.approx(result.metrics[key], rel=1e-5), key


def test_the_models_read_missing_and_unknown_values_as_neutral() -> None:
    from models.tabular import TabularClassifier

    torch.manual_seed(0)
    m = TabularClassifier(3, 2, feature_mean=[0.0, 0.0, 5.0], feature_std=[1.0, 1.0, 2.0],
                          cardinalities=[0, 4, 0]).eval()
    nan = float("nan")
    x = torch.tensor([[0.5, 1.0, 5.0], [0.5, 1.0, nan], [0.5, 9.0, 7.0], [0.5, nan, 7.0],
                      [0.5, -1.0, 7.0]])
    out = m(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], out[0])  # a missing number reads as the training mean
    torch.testing.assert_close(out[3], out[2])  # unknown code = missing category = same row
    torch.testing.assert_close(out[4], out[2])
    with pytest.raises(ValueError, match=r"TabularClassifier.feature_mean: 2 values for 3"):
        TabularClassifier(3, 2, feature_mean=[0.0, 1.0])
