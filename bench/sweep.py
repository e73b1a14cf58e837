"""Sweep wall time: N trials one at a time vs ``--parallel 2``, with and without pruning, and the
sweep's overhead per trial over fitting the same trials directly (``tasks.train.fit``, no
Prefect, no Optuna, no MLflow).

    PYTHONPATH=. .venv/bin/python bench/sweep.py [--trials 16] [--epochs 3]

Each case runs in a fresh project folder (nothing cached) after an unmeasured warm-up sweep
(Prefect's local API start); registry and export are off, so the figures are the trials plus
one prepare and one evaluate. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
_TMP = Path()


def _use_project(path: Path) -> None:
    os.environ["TRAINFLOW_PROJECT_DIR"] = str(path)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path}/.trainflow/mlflow.db"
    (path / ".trainflow").mkdir(parents=True, exist_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    # Made here, not at import: worker processes re-import this module.
    global _TMP
    _TMP = Path(tempfile.mkdtemp(prefix="trainflow-bench-sweep-"))
    os.environ.setdefault("PREFECT_HOME", str(_TMP / "prefect"))

    from flows.sweep import with_params
    from flows.sweep_flow import run_sweep
    from tasks.config import load_config
    from tasks.prepare_data import prepare
    from tasks.train import fit

    base = [f"trainer.max_epochs={args.epochs}", f"sweep.trials={args.trials}",
            "registry.enabled=false", "export.onnx=false", "export.torchscript=false"]
    rows = []
    direct_params = None
    try:
        # Warm-up, not measured: Prefect's local API, the MLflow schema, the imports.
        warm = load_config(REPO / "configs" / "sweep.yaml", [*base, "sweep.trials=1",
                                                              "trainer.max_epochs=1"])
        _use_project(_TMP / "warm-up")
        run_sweep(warm)
        for parallel in (1, 2):
            for pruner in ("none", "median"):
                cfg = load_config(REPO / "configs" / "sweep.yaml",
                                  [*base, f"sweep.parallel={parallel}", f"sweep.pruner={pruner}"])
                _use_project(_TMP / f"p{parallel}-{pruner}")
                t0 = time.perf_counter()
                result = run_sweep(cfg)
                wall = time.perf_counter() - t0
                epochs = sum(t.epochs for t in result.trials)
                pruned = sum(t.state == "pruned" for t in result.trials)
                rows.append((parallel, pruner, wall, epochs, pruned, result.best_value))
                if parallel == 1 and pruner == "none":
                    direct_params = [t.params for t in result.trials]
                    seq_wall = wall

        # The same trials fitted directly, one after another.
        _use_project(_TMP / "direct")
        cfg = load_config(REPO / "configs" / "sweep.yaml", base)
        data = prepare(cfg.data, _TMP / "direct" / "data")
        t0 = time.perf_counter()
        for i, params in enumerate(direct_params or []):
            fit(data, with_params(cfg, params), _TMP / "direct" / f"t{i}", f"t{i}", track=False)
        direct = time.perf_counter() - t0
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)

    print(f"\n{args.trials} trials x {args.epochs} epochs, digits MLP, fresh project each\n")
    print("| parallel | pruner | wall s | epochs trained | pruned | best val_loss |")
    print("|---:|---|---:|---:|---:|---:|")
    for parallel, pruner, wall, epochs, pruned, best in rows:
        print(f"| {parallel} | {pruner} | {wall:.1f} | {epochs} | {pruned} | {best:.4f} |")
    n = len(direct_params or [])
    print(f"\ndirect fit of the same {n} trials: {direct:.1f} s; sweep (parallel 1, no pruner) "
          f"overhead per trial: {(seq_wall - direct) / max(n, 1):.2f} s "
          "(Prefect task + result, Optuna SQLite, MLflow runs, one prepare + evaluate)")


if __name__ == "__main__":
    main()
