"""Config-only `trainflow run` on public tables against scikit-learn, on the same split.

For each table a fresh project folder gets the table as a CSV or parquet file and a config that
sets only ``data.path``, ``data.label`` and ``data.task`` (plus ``data.categorical`` when the
table has string columns); the pipeline runs with its defaults (the built-in tabular model). Then
scikit-learn's linear model (LogisticRegression / Ridge on standardised numbers and one-hot
categories) and HistGradientBoosting (native categories), default settings, are fitted on the
pipeline's own prepared train split (train + val: the pipeline also saw both) and scored on its
test split. Printed: test accuracy / R², the gap to the better scikit-learn model, the pipeline's
train-stage wall time beside scikit-learn's fit times.

Tables: scikit-learn's wine, breast cancer (labels as "M"/"B"), iris, digits and diabetes, and two
seeded synthetic tables with categorical columns (make_classification / make_regression).

    PYTHONPATH=. python bench/tabular_quality.py [--only wine,iris] [--rows 20000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Table:
    name: str
    frame: pd.DataFrame
    label: str
    task: str
    fmt: str  # csv | parquet
    categorical: list[str]


def _sk(loader: object, label: str = "target") -> pd.DataFrame:
    frame = loader(as_frame=True).frame  # type: ignore[operator]
    return frame.rename(columns={"target": label})


def synthetic_classification(rows: int, seed: int = 0) -> pd.DataFrame:
    """make_classification plus two string columns: one tied to the class, one noise."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows, n_features=20, n_informative=10, n_redundant=4,
                               n_classes=3, class_sep=1.0, flip_y=0.02, random_state=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    colours = np.array(["red", "green", "blue", "black", "white", "grey"])
    # the colour agrees with the class two times out of three
    agree = rng.random(rows) < 2 / 3
    frame["colour"] = np.where(agree, colours[y * 2], colours[rng.integers(0, 6, rows)])
    frame["shop"] = np.array([f"shop{i}" for i in range(40)])[rng.integers(0, 40, rows)]
    frame["label"] = np.array(["low", "mid", "high"])[y]
    return frame


def synthetic_regression(rows: int, seed: int = 0) -> pd.DataFrame:
    """make_regression with a mild nonlinearity and a string column that shifts the target."""
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=rows, n_features=12, n_informative=8, noise=20.0,
                           random_state=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    regions = np.array(["north", "south", "east", "west", "centre"])
    region = rng.integers(0, 5, rows)
    offset = np.array([-60.0, -20.0, 0.0, 30.0, 80.0])[region]
    frame["region"] = regions[region]
    frame["target"] = y + offset + 25.0 * np.sin(x[:, 0]) * x[:, 1]
    return frame


def tables(rows: int) -> list[Table]:
    """The benchmark's tables (a package ships them or a seeded generator makes them)."""
    from sklearn import datasets as D

    cancer = _sk(D.load_breast_cancer, "diagnosis")
    cancer["diagnosis"] = np.where(cancer["diagnosis"] == 0, "M", "B")  # sklearn: 0 = malignant
    return [
        Table("wine", _sk(D.load_wine, "cultivar"), "cultivar", "classification", "csv", []),
        Table("breast_cancer", cancer, "diagnosis", "classification", "csv", []),
        Table("iris", _sk(D.load_iris, "species"), "species", "classification", "parquet", []),
        Table("digits", _sk(D.load_digits, "digit"), "digit", "classification", "parquet", []),
        Table("diabetes", _sk(D.load_diabetes, "progression"), "progression", "regression",
              "csv", []),
        Table("synth_classes", synthetic_classification(rows), "label", "classification",
              "parquet", ["colour", "shop"]),
        Table("synth_regression", synthetic_regression(rows), "target", "regression", "csv",
              ["region"]),
    ]


def write_project(table: Table, root: Path) -> Path:
    """The table's file and a config of a few lines in ``root``; returns the config's path."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{table.name}.{table.fmt}"
    if table.fmt == "csv":
        table.frame.to_csv(data, index=False)
    else:
        table.frame.to_parquet(data, index=False)
    lines = ["data:", f"  path: {data.name}", f"  label: {table.label}", f"  task: {table.task}"]
    if table.categorical:
        lines.append(f"  categorical: [{', '.join(table.categorical)}]")
    cfg = root / "config.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def sklearn_scores(data: object, task: str) -> dict[str, tuple[float, float]]:
    """{model: (test score, fit seconds)} on the pipeline's prepared splits."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from tasks.prepare_data import load_split

    parts = [load_split(data, s) for s in ("train", "val") if data.splits[s].rows]  # type: ignore[attr-defined]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = load_split(data, "test")  # type: ignore[arg-type]
    stats = json.loads(Path(data.stats_path).read_text())  # type: ignore[attr-defined]
    cats = [j for j, f in enumerate(data.features) if f in stats["categorical_codes"]]  # type: ignore[attr-defined]
    nums = [j for j in range(x_train.shape[1]) if j not in cats]
    encode = ColumnTransformer([("num", StandardScaler(), nums),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), cats)])
    cat_mask = [j in cats for j in range(x_train.shape[1])] if cats else None
    if task == "classification":
        models = {"linear": make_pipeline(encode, LogisticRegression()),
                  "hgb": HistGradientBoostingClassifier(categorical_features=cat_mask)}
        score = accuracy_score
    else:
        models = {"linear": make_pipeline(encode, Ridge()),
                  "hgb": HistGradientBoostingRegressor(categorical_features=cat_mask)}
        score = r2_score
    out = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        model.fit(x_train, y_train)
        out[name] = (float(score(y_test, model.predict(x_test))), time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated table names")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the synthetic tables")
    parser.add_argument("--seeds", type=int, default=1,
                        help="also run trainer.seed=1..N-1 (as --set would) and show the spread")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trainflow-tabular-bench-"))
    os.environ["TRAINFLOW_PROJECT_DIR"] = str(base / "project")  # one fresh project, no cache
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base}/project/.trainflow/mlflow.db"
    from flows.pipeline import training_pipeline

    wanted = {n for n in args.only.split(",") if n}
    rows = []
    for table in tables(args.rows):
        if wanted and table.name not in wanted:
            continue
        cfg = write_project(table, base / table.name)
        key = "test_acc" if table.task == "classification" else "test_r2"
        runs = [training_pipeline(str(cfg), [f"trainer.seed={s}"] if s else None)
                for s in range(args.seeds)]
        sk = sklearn_scores(runs[0].data, table.task)
        best = max(v[0] for v in sk.values())
        rows.append((table, runs, [r.metrics[key] for r in runs], sk, best))
    metric = {"classification": "accuracy", "regression": "R²"}
    print()
    print("| table | rows | task | metric | trainflow | linear | HGB | gap to best | epochs "
          "| train stage s | linear fit s | HGB fit s |" + (" seeds: min / mean gap |"
                                                          if args.seeds > 1 else ""))
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
          + ("---:|" if args.seeds > 1 else ""))
    for table, runs, scores, sk, best in rows:
        first = runs[0]
        spread = (f" {min(scores) - best:+.4f} / {np.mean(scores) - best:+.4f} |"
                  if args.seeds > 1 else "")
        print(f"| {table.name} | {len(table.frame)} | {table.task} | {metric[table.task]} "
              f"| {scores[0]:.4f} | {sk['linear'][0]:.4f} | {sk['hgb'][0]:.4f} "
              f"| {scores[0] - best:+.4f} | {first.trained.epochs} "
              f"| {first.stages['train'].seconds:.1f} | {sk['linear'][1]:.2f} "
              f"| {sk['hgb'][1]:.2f} |{spread}")


if __name__ == "__main__":
    main()
