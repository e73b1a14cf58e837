"""Sweep wall time: N trials one at a time vs ``--parallel 2``, with and without pruning; the
sweep's overhead per trial over fitting the same trials directly; the best trial's objective
against the default config's.

    PYTHONPATH=. .venv/bin/python bench/sweep.py [--trials 16] [--epochs E] [--repeats R]

``--epochs``: the trials' epochs (default: configs/sweep.yaml's, a realistic trial; 3 shows
how a tiny trial fares). Each case runs in a fresh project folder (nothing cached) after an
unmeasured warm-up sweep (Prefect's local API, imports); registry and export are off.

- *trial rounds*: the sweep's own clock around its trials (asks, Prefect tasks, fits with
  pruning and curves, tells, the study's rows and MLflow child runs written on background
  threads while the next trial trains, and waiting for the last ones); *wall*: the whole flow,
  plus prepare, the study and parent run, the Optuna plots and the best trial's evaluation.
- *direct*: the same trials (the sequential, unpruned case's parameters) fitted one after
  another with ``tasks.train.fit(track=False)``: the Trainer with the stage's checkpoints, no
  Prefect, Optuna or MLflow. Overhead per trial = (trial rounds − direct) / N, each the
  fastest of ``--repeats`` alternated runs (direct, sweep, direct, sweep, ...).
- *default*: configs/default.yaml's model settings fitted the same way, its best validation
  loss (the objective's definition: best over the validations).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
_TMP = Path()


def _use_project(path: Path) -> None:
    os.environ["TRAINFLOW_PROJECT_DIR"] = str(path)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path}/.trainflow/mlflow.db"
    (path / ".trainflow").mkdir(parents=True, exist_ok=True)


def _direct(data: Any, cfgs: list[Any], root: Path, monitor: str) -> tuple[float, list[float]]:
    """Fit each config with the bare stage; seconds, and each fit's best ``monitor``."""
    from tasks.train import fit
    from trainer.callbacks import Callback

    class Best(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            if not trainer.sanity_checking:
                self.values.append(float(trainer.callback_metrics[monitor]))

    t0 = time.perf_counter()
    best = []
    for i, cfg in enumerate(cfgs):
        cb = Best()
        fit(data, cfg, root / f"t{i}", f"t{i}", track=False, callbacks=[cb])
        best.append(min(cb.values))
    return time.perf_counter() - t0, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=None, help="default: configs/sweep.yaml's")
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternated direct/sweep pairs for the overhead (default 2)")
    args = ap.parse_args()
    # Made here, not at import: worker processes re-import this module.
    global _TMP
    _TMP = Path(tempfile.mkdtemp(prefix="trainflow-bench-sweep-"))
    os.environ.setdefault("PREFECT_HOME", str(_TMP / "prefect"))

    from flows.sweep import with_params
    from flows.sweep_flow import run_sweep
    from tasks.config import load_config
    from tasks.prepare_data import prepare

    base = [f"sweep.trials={args.trials}", "registry.enabled=false", "export.onnx=false",
            "export.torchscript=false"]
    if args.epochs:
        base.append(f"trainer.max_epochs={args.epochs}")
    sweep_yaml = REPO / "configs" / "sweep.yaml"
    rows = []
    try:
        # Warm-up, not measured: Prefect's local API, the MLflow schema, the imports (two
        # trials, so the importance plot's imports are warm too).
        _use_project(_TMP / "warm-up")
        run_sweep(load_config(sweep_yaml, [*base, "sweep.trials=2", "trainer.max_epochs=1"]))
        for parallel in (1, 2):
            for pruner in ("none", "median"):
                cfg = load_config(sweep_yaml,
                                  [*base, f"sweep.parallel={parallel}", f"sweep.pruner={pruner}"])
                _use_project(_TMP / f"p{parallel}-{pruner}")
                t0 = time.perf_counter()
                result = run_sweep(cfg)
                wall = time.perf_counter() - t0
                rows.append((parallel, pruner, wall, result))
        seq = rows[0][3]

        # The overhead pairs, alternated: direct fits, the sequential unpruned sweep again, ...
        # The machine's load drifts (other jobs); the fastest of each is compared.
        _use_project(_TMP / "direct")
        cfg = load_config(sweep_yaml, base)
        data = prepare(cfg.data, _TMP / "direct" / "data")
        cfgs = [with_params(cfg, t.params) for t in seq.trials]
        rounds, direct = seq.trial_seconds, float("inf")
        for i in range(args.repeats):
            _use_project(_TMP / f"direct{i}")
            direct = min(direct, _direct(data, cfgs, _TMP / f"direct{i}", cfg.sweep.objective)[0])
            if i + 1 < args.repeats:
                _use_project(_TMP / f"again{i}")
                again = run_sweep(load_config(sweep_yaml, [*base, "sweep.pruner=none"]))
                rounds = min(rounds, again.trial_seconds)
        # The default config's model and training, on the sweep's data split and epochs.
        default = load_config(REPO / "configs" / "default.yaml", [])
        dcfg = cfg.model_copy(update={"model": default.model})
        _, (default_best,) = _direct(data, [dcfg], _TMP / "default", cfg.sweep.objective)
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)

    n = len(seq.trials)
    epochs = cfg.trainer.max_epochs
    print(f"\n{n} trials x {epochs} epochs, digits MLP, fresh project each\n")
    print("| parallel | pruner | wall s | trial rounds s | epochs trained | pruned | "
          "best val_loss |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for parallel, pruner, wall, r in rows:
        trained = sum(t.epochs for t in r.trials)
        pruned = sum(t.state == "pruned" for t in r.trials)
        print(f"| {parallel} | {pruner} | {wall:.1f} | {r.trial_seconds:.1f} | {trained} | "
              f"{pruned} | {r.best_value:.4f} |")
    per_trial = direct / max(n, 1)
    over = (rounds - direct) / max(n, 1)
    fixed = rows[0][2] - seq.trial_seconds
    print("\n| direct fit per trial s | sweep overhead per trial s | overhead % | "
          "fixed per sweep s | best val_loss: sweep (parallel 1, none) | default config |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {per_trial:.2f} | {over:.2f} | {100 * over / per_trial:.0f} % | {fixed:.1f} | "
          f"{seq.best_value:.4f} | {default_best:.4f} |")


if __name__ == "__main__":
    main()
