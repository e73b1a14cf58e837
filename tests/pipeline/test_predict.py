"""`trainflow predict` as a user runs it: a model registered from their own table and module,
then predictions by column name on rows it never saw, from the registry alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict_project import (
    champion_tags,
    held_out,
    last_line,
    make_project,
    trainflow,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose champion classifies M/B from radius, texture and colour."""
    project = tmp_path_factory.mktemp("clf")
    config = make_project(project, "classification", "tiny-clf")
    res = trainflow(project, "run", str(config))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    held_out(project, project / "held_out.parquet")
    shutil.rmtree(project / ".trainflow" / "stages")  # predict reads the registry alone
    return project


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("reg")
    config = make_project(project, "regression", "tiny-reg")
    res = trainflow(project, "run", str(config))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    held_out(project, project / "held_out.parquet")
    return project


def _predict(project: Path, inp: Path, out: Path, *extra: str, model: str = "tiny-clf"):
    return trainflow(project, "predict", "--model", model, "--input", str(inp),
                     "--output", str(out), *extra)


def test_held_out_accuracy_equals_the_registered_metric(classifier: Path) -> None:
    res = _predict(classifier, classifier / "held_out.parquet", classifier / "pred.parquet")
    assert res.returncode == 0, res.stderr[-3000:]
    pred = pd.read_parquet(classifier / "pred.parquet")
    truth = pd.read_parquet(classifier / "held_out.parquet")["diagnosis"]
    assert set(pred["prediction"]) <= {"M", "B"}  # the user's labels, not codes
    accuracy = float((pred["prediction"] == truth).mean())
    registered = float(champion_tags(classifier, "tiny-clf")["metric.test_acc"])
    assert accuracy == pytest.approx(registered, abs=1e-6)
    assert accuracy > 0.8  # it learned something: the check above is not 0 == 0


def test_reordered_columns_give_identical_predictions(classifier: Path) -> None:
    table = pd.read_parquet(classifier / "held_out.parquet")
    table.to_csv(classifier / "in.csv", index=False)
    table[["colour", "texture", "diagnosis", "radius"]].to_csv(classifier / "re.csv", index=False)
    first = _predict(classifier, classifier / "in.csv", classifier / "a.csv")
    second = _predict(classifier, classifier / "re.csv", classifier / "b.csv")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    a, b = pd.read_csv(classifier / "a.csv"), pd.read_csv(classifier / "b.csv")
    assert a["prediction"].tolist() == b["prediction"].tolist()
    assert len(set(a["prediction"])) == 2  # both classes occur: a reorder would show


def test_probabilities_are_named_after_the_classes(classifier: Path) -> None:
    res = _predict(classifier, classifier / "held_out.parquet", classifier / "p.parquet",
                   "--probabilities")
    assert res.returncode == 0, res.stderr[-3000:]
    pred = pd.read_parquet(classifier / "p.parquet")
    assert pred.columns[0] == "prediction" and sorted(pred.columns[1:]) == ["B", "M"]
    np.testing.assert_allclose(pred[["M", "B"]].sum(axis=1), 1.0, rtol=1e-6)
    assert (pred[["M", "B"]].idxmax(axis=1) == pred["prediction"]).all()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda t: t.rename(columns={"radius": "radius_cm"}), "'radius' is missing"),
        (lambda t: t.drop(columns=["texture"]), "'texture' is missing"),
        (lambda t: t.assign(age=1), "'age' is not a feature"),
        (lambda t: t.assign(radius="big"), "'radius': not numeric"),
        (lambda t: t.iloc[:0], "holds no rows"),
    ],
    ids=["renamed", "missing", "unknown", "text-in-number", "empty"],
)
def test_bad_input_is_refused_in_one_last_line(classifier: Path, change, named: str) -> None:
    table = change(pd.read_parquet(classifier / "held_out.parquet"))
    bad = classifier / "bad.csv"
    table.to_csv(bad, index=False)
    out = classifier / "never.parquet"
    res = _predict(classifier, bad, out)
    assert res.returncode != 0
    assert last_line(res.stderr).startswith("error: --input")
    assert named in last_line(res.stderr)
    assert not out.exists() and not list(classifier.glob(".never.parquet*"))


def test_unknown_model_is_one_line(classifier: Path) -> None:
    res = _predict(classifier, classifier / "held_out.parquet", classifier / "x.parquet",
                   model="no-such-model")
    assert res.returncode != 0
    assert "no-such-model" in last_line(res.stderr) and "champion" in last_line(res.stderr)


def test_regression_predicts_values_matching_the_registered_mse(regressor: Path) -> None:
    res = _predict(regressor, regressor / "held_out.parquet", regressor / "pred.parquet",
                   model="tiny-reg")
    assert res.returncode == 0, res.stderr[-3000:]
    pred = pd.read_parquet(regressor / "pred.parquet")["prediction"]
    truth = pd.read_parquet(regressor / "held_out.parquet")["target"]
    assert pred.dtype == np.float64 and pred.nunique() > len(pred) // 2  # values, not argmax
    mse = float(((pred - truth.astype(np.float32).astype(np.float64)) ** 2).mean())
    registered = float(champion_tags(regressor, "tiny-reg")["metric.test_mse"])
    assert mse == pytest.approx(registered, rel=1e-4)
    probs = _predict(regressor, regressor / "held_out.parquet", regressor / "p.parquet",
                     "--probabilities", model="tiny-reg")
    assert probs.returncode != 0 and "no classes" in last_line(probs.stderr)
