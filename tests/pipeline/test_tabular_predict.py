"""Each built-in model (models.tabular) as a user meets it: a fresh project folder, their own
table (a CSV from data scikit-learn ships, a seeded parquet), a config of a few lines with no
``model:`` section, ``trainflow run``, then ``trainflow predict`` on the held-out rows: the metric
recomputed from predict's output equals the registered one; columns in another order give the
same predictions; a renamed column is refused by its name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict_project import champion_tags, held_out, last_line, trainflow

pytestmark = pytest.mark.slow

RUN = ("--set", "trainer.max_epochs=5")


def _project(root: Path, data: str, name: str, api: str) -> Path:
    (root / "config.yaml").write_text(
        f"data: {data}\n"
        f"registry: {{model_name: {name}}}\n"
    )
    res = trainflow(root, "run", str(root / "config.yaml"), *RUN, api=api)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    held_out(root, root / "held_out.parquet")
    return root


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """TabularClassifier on scikit-learn's wine table, labels as the class names (a CSV)."""
    from sklearn.datasets import load_wine

    root = tmp_path_factory.mktemp("wine")
    bunch = load_wine(as_frame=True)
    frame = bunch.frame
    frame["target"] = np.asarray(bunch.target_names)[frame["target"]]
    frame.to_csv(root / "wine.csv", index=False)
    return _project(root, "{path: wine.csv, label: target}", "wine", prefect_api)


@pytest.fixture(scope="module")
def sales(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """TabularRegressor on a seeded make_regression table with a category column (parquet)."""
    from sklearn.datasets import make_regression

    root = tmp_path_factory.mktemp("sales")
    x, y = make_regression(n_samples=600, n_features=5, noise=5.0, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    rng = np.random.default_rng(0)
    frame["region"] = rng.choice(["north", "south", "east"], len(frame))
    frame["target"] = y / 50.0 + frame["region"].map({"north": 1.0, "south": -1.0, "east": 0.0})
    frame.to_parquet(root / "sales.parquet", index=False)
    return _project(root, "{path: sales.parquet, label: target, categorical: [region], "
                          "task: regression}", "sales", prefect_api)


def _predict(project: Path, model: str, inp: Path, out: Path, *extra: str):
    return trainflow(project, "predict", "--model", model, "--input", str(inp),
                     "--output", str(out), *extra)


def _predict_held_out(project: Path, model: str) -> Path:
    """`trainflow predict` on the held-out rows, once per project (pred.parquet)."""
    res = _predict(project, model, project / "held_out.parquet", project / "pred.parquet")
    assert res.returncode == 0, res.stderr[-3000:]
    return project / "pred.parquet"


@pytest.fixture(scope="module")
def wine_pred(wine: Path) -> Path:
    return _predict_held_out(wine, "wine")


@pytest.fixture(scope="module")
def sales_pred(sales: Path) -> Path:
    return _predict_held_out(sales, "sales")


def test_classifier_accuracy_from_predict_equals_the_registered_metric(
    wine: Path, wine_pred: Path
) -> None:
    pred = pd.read_parquet(wine_pred)["prediction"]
    truth = pd.read_parquet(wine / "held_out.parquet")["target"]
    assert set(pred) <= {"class_0", "class_1", "class_2"}  # the user's labels, not codes
    accuracy = float((pred == truth).mean())
    assert accuracy == pytest.approx(float(champion_tags(wine, "wine")["metric.test_acc"]),
                                     abs=1e-6)
    assert accuracy > 0.8  # it learned something: the equality above is not 0 == 0


def test_regressor_errors_from_predict_equal_the_registered_metrics(
    sales: Path, sales_pred: Path
) -> None:
    column = pd.read_parquet(sales_pred)["prediction"]
    assert column.dtype == np.float64 and column.nunique() > len(column) // 2  # values, not argmax
    pred = column.to_numpy(np.float64)
    truth = pd.read_parquet(sales / "held_out.parquet")["target"].to_numpy(np.float64)
    tags = champion_tags(sales, "sales")
    err = pred - truth
    rmse = float(np.sqrt((err ** 2).mean()))
    mae = float(np.abs(err).mean())
    r2 = 1.0 - float((err ** 2).sum() / ((truth - truth.mean()) ** 2).sum())
    assert rmse == pytest.approx(float(tags["metric.test_rmse"]), rel=1e-6, abs=1e-6)
    assert mae == pytest.approx(float(tags["metric.test_mae"]), rel=1e-6, abs=1e-6)
    assert r2 == pytest.approx(float(tags["metric.test_r2"]), abs=1e-6)
    assert r2 > 0.5  # it learned something
    probs = _predict(sales, "sales", sales / "held_out.parquet", sales / "p.parquet",
                     "--probabilities")
    assert probs.returncode != 0 and "no classes" in last_line(probs.stderr)


@pytest.mark.parametrize(("fixture", "model"), [("wine", "wine"), ("sales", "sales")])
def test_reordered_columns_give_identical_predictions(request, fixture: str, model: str) -> None:
    project: Path = request.getfixturevalue(fixture)
    in_order: Path = request.getfixturevalue(f"{fixture}_pred")  # the held-out rows as they are
    table = pd.read_parquet(project / "held_out.parquet")
    table[list(reversed(table.columns))].to_parquet(project / "reordered.parquet", index=False)
    second = _predict(project, model, project / "reordered.parquet", project / "b.parquet")
    assert second.returncode == 0, second.stderr
    a = pd.read_parquet(in_order)["prediction"]
    b = pd.read_parquet(project / "b.parquet")["prediction"]
    assert a.tolist() == b.tolist()
    assert a.nunique() > 1  # not one constant answer: a reorder would show


@pytest.mark.parametrize(("fixture", "model", "column"),
                         [("wine", "wine", "alcohol"), ("sales", "sales", "region")])
def test_a_renamed_column_is_refused_by_its_name(request, fixture: str, model: str,
                                                 column: str) -> None:
    project: Path = request.getfixturevalue(fixture)
    table = pd.read_parquet(project / "held_out.parquet")
    table.rename(columns={column: column + "_x"}).to_csv(project / "renamed.csv", index=False)
    out = project / "never.parquet"
    res = _predict(project, model, project / "renamed.csv", out)
    assert res.returncode != 0
    assert last_line(res.stderr).startswith("error: --input")
    assert f"'{column}' is missing" in last_line(res.stderr)
    assert not out.exists()
