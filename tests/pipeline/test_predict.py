"""`trainflow predict` as a user runs it: a model registered from their own table and module,
then predictions by column name on rows it never saw, from the registry alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict_project import (
    champion_tags,
    last_line,
    tracking_uri,
    trainflow,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def classifier(tiny_classifier: Path) -> Path:
    """A project whose champion ``tiny-clf`` classifies M/B from radius, texture and colour; its
    stage folders are gone (see conftest's ``tiny_classifier``)."""
    assert not (tiny_classifier / ".trainflow" / "stages").exists()
    return tiny_classifier


def _predict(project: Path, inp: Path, out: Path, *extra: str, model: str = "tiny-clf"):
    return trainflow(project, "predict", "--model", model, "--input", str(inp),
                     "--output", str(out), *extra)


@pytest.fixture(scope="module")
def probs(tiny_classifier: Path) -> pd.DataFrame:
    """`trainflow predict --probabilities` on the held-out rows, once for the two tests below."""
    res = _predict(tiny_classifier, tiny_classifier / "held_out.parquet",
                   tiny_classifier / "p.parquet", "--probabilities")
    assert res.returncode == 0, res.stderr[-3000:]
    return pd.read_parquet(tiny_classifier / "p.parquet")


def test_held_out_accuracy_equals_the_registered_metric(
    classifier: Path, probs: pd.DataFrame
) -> None:
    pred = probs
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


def test_probabilities_are_named_after_the_classes(probs: pd.DataFrame) -> None:
    pred = probs
    assert pred.columns[0] == "prediction" and sorted(pred.columns[1:]) == ["B", "M"]
    np.testing.assert_allclose(pred[["M", "B"]].sum(axis=1), 1.0, rtol=1e-6)
    assert (pred[["M", "B"]].idxmax(axis=1) == pred["prediction"]).all()


BAD_INPUTS = {
    "renamed": (lambda t: t.rename(columns={"radius": "radius_cm"}), "'radius' is missing"),
    "missing": (lambda t: t.drop(columns=["texture"]), "'texture' is missing"),
    "unknown": (lambda t: t.assign(age=1), "'age' is not a feature"),
    "text-in-number": (lambda t: t.assign(radius="big"), "'radius': not numeric"),
    "empty": (lambda t: t.iloc[:0], "holds no rows"),
}


def _bad_file(project: Path, case: str) -> tuple[Path, str]:
    change, named = BAD_INPUTS[case]
    bad = project / f"bad-{case}.csv"
    change(pd.read_parquet(project / "held_out.parquet")).to_csv(bad, index=False)
    return bad, named


def test_each_bad_input_is_refused_naming_it(
    classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the registered version refuses, case by case, through the code `trainflow predict`
    calls (one model load for all; the CLI's own exit and last line are checked below)."""
    from tasks.inference import InputError, Predictor, predict_file

    # MLflow writes the URI it restores into os.environ: keep it to this test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(classifier))
    predictor = Predictor.from_registry("tiny-clf", "champion", tracking_uri(classifier))
    for case in BAD_INPUTS:
        bad, named = _bad_file(classifier, case)
        out = classifier / f"never-{case}.parquet"
        with pytest.raises(InputError) as err:
            predict_file(predictor, bad, out)
        assert named in str(err.value), case
        assert not out.exists() and not list(classifier.glob(f".never-{case}.parquet*")), case


# the two ways the CLI words the refusal: a column check's message gets the --input prefix, the
# reader's "holds no rows" carries it already
@pytest.mark.parametrize("case", ["renamed", "empty"])
def test_bad_input_is_refused_in_one_last_line(classifier: Path, case: str) -> None:
    bad, named = _bad_file(classifier, case)
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
