"""One sweep trial: fit a trial's resolved config, report the objective to its Optuna trial at
each validation, and stop early when the study's pruner says so.

The trial's outputs live in ``<home>/stages/trial/<key>/`` where ``key`` hashes what the train
stage's key hashes (data, model and trainer sections, code) plus the objective and the pruner:
a rerun of the same trial is served from cache, and a trial killed mid-fit resumes from its
``last.ckpt`` like the train stage. A pruned fit lives in its own folder, never in the train
stage's, so ``trainflow run`` with the same config never picks up a model cut short.

A trial touches no database: the Trainer logs into ``curves.jsonl`` in the trial's folder (the
flow writes the MLflow child run from it, off the trials' path: ``flows/sweep_runs.py``), and
the pruner judges the trial against a copy of the study in memory (:class:`OptunaPruning`); the
flow records the outcome in the study (``flows/sweep_study.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.config import PipelineConfig, SweepConfig
from tasks.train import fit
from tasks.train import stage_key as train_key
from tasks.types import DatasetRef, StageError, TrainResult, content_key
from trainer.callbacks import Callback
from trainer.fileio import atomic_write_text
from trainer.loggers.base import Logger, rank_zero_only
from trainer.loggers.mlflow import flatten_params

CODE_VERSION = "trial-2"  # 2: no MLflow run of its own, curves.jsonl
CURVES = "curves.jsonl"


class TrialOutcome(BaseModel):
    """What a trial produced: the objective's best value, whether it was pruned, the fit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float | None  # best objective over the validations (None: never validated)
    pruned: bool
    epochs: int  # epochs run
    curve: dict[int, float]  # the objective at each validation, by epoch
    trained: TrainResult
    cache_key: str


class OptunaPruning(Callback):
    """Report ``monitor`` to the trial after each validation; stop when the pruner says so.

    The trial lives in a study of its own, in memory: ``history``, the trials the sweep's study
    had finished when this one was asked, and the trial itself. Optuna's pruners judge a trial
    by its own reports against finished trials (the median pruner: COMPLETE ones only), and the
    sweep tells trials only at the end of each round, so this copy decides what the study would,
    without the database. The sweep reports the curve to its study when it tells the trial.

    Lightning's integration raises ``TrialPruned`` from ``on_validation_end``; here the fit ends
    cleanly instead (``trainer.should_stop``), so the checkpoint and the curves are closed as
    usual, and the sweep tells Optuna the trial was pruned.
    """

    def __init__(self, trial: Any, monitor: str, pruner: Any, direction: str,
                 history: Sequence[Any] = ()) -> None:
        self.monitor = monitor
        self.pruned = False
        self.curve: dict[int, float] = {}
        self._template = trial  # params and distributions: a FrozenTrial or a Trial
        self._pruner = pruner
        self._direction = direction
        self._history = list(history)
        self._trial: Any = None  # made on first use, in the process that fits

    def __getstate__(self) -> dict[str, Any]:  # pickled to DDP workers: each makes its own
        return {**self.__dict__, "_trial": None}

    def _own_trial(self) -> Any:
        import optuna

        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, pruner=self._pruner,
                                    direction=self._direction)
        sid = storage.get_study_id_from_name(study.study_name)
        for t in self._history:
            storage.create_new_trial(sid, template_trial=t)
        me = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params=self._template.params,
            distributions=self._template.distributions)
        return optuna.trial.Trial(study, storage.create_new_trial(sid, template_trial=me))

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise StageError(
                f"sweep.objective: {self.monitor!r} is not logged at validation "
                f"(the model logs {logged}); pick one of those"
            )
        step, value = int(trainer.current_epoch), float(value)
        self.curve[step] = value
        if self._trial is None:
            self._trial = self._own_trial()
        self._trial.report(value, step)
        if self._trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


class CurvesLogger(Logger):
    """What the Trainer logs, appended to ``<folder>/curves.jsonl`` at each epoch end.

    A line per ``log_metrics`` call (``{"t", "step", "metrics"}``) and one per
    ``log_hyperparams`` (``{"params"}``, flattened as MLflow params). No fsync: a killed process
    loses nothing written (a power cut may lose the last lines). A resumed fit appends.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CURVES
        self._lines: list[str] = []

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        self._lines.append(json.dumps({"params": flatten_params(params)}))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        vals = {k: float(v) for k, v in metrics.items()}
        self._lines.append(json.dumps({"t": time.time(), "step": int(step), "metrics": vals}))

    @rank_zero_only
    def save(self) -> None:
        if self._lines:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("\n".join(self._lines) + "\n")
            self._lines = []


def read_curves(folder: Path) -> tuple[dict[str, str], list[tuple[float, int, dict[str, float]]]]:
    """``curves.jsonl`` back: the params, and the metric rows ``(time_s, step, values)``."""
    params: dict[str, str] = {}
    rows: list[tuple[float, int, dict[str, float]]] = []
    path = Path(folder) / CURVES
    if not path.exists():
        return params, rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if "params" in item:
            params.update(item["params"])
        else:
            rows.append((item["t"], item["step"], item["metrics"]))
    return params, rows


def make_pruner(sweep: SweepConfig) -> Any:
    """The study's pruner: median over earlier trials at the same epoch, or none."""
    import optuna

    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=sweep.warmup_epochs)


def trial_key(data: DatasetRef, cfg: PipelineConfig) -> str:
    """Cache key: the train stage's key for this config, plus the objective and the pruner."""
    sw = cfg.sweep or SweepConfig()
    return content_key(
        {
            "stage": "trial",
            "code": CODE_VERSION,
            "train": train_key(data, cfg.model, cfg.trainer),
            "objective": [sw.objective, sw.mode],
            "pruner": [sw.pruner, sw.warmup_epochs],
        }
    )


def run_trial(
    data: DatasetRef, cfg: PipelineConfig, root: Path, key: str, trial: Any,
    history: Sequence[Any] = (),
) -> TrialOutcome:
    """Fit one trial into ``root`` without Prefect (resumes; a finished one is read back).

    ``trial``: its params and distributions (an Optuna FrozenTrial or Trial); ``history``: the
    study's finished trials when it was asked (FrozenTrials), what the pruner compares it with.
    """
    done = root / "trial.json"
    if done.exists():
        return TrialOutcome.model_validate_json(done.read_text())
    sw = cfg.sweep or SweepConfig()
    pruning = OptunaPruning(trial, sw.objective, make_pruner(sw),
                            "minimize" if sw.mode == "min" else "maximize", history)
    root.mkdir(parents=True, exist_ok=True)
    trained = fit(data, cfg, root, key, track=False, callbacks=[pruning],
                  logger=CurvesLogger(root))
    curve = pruning.curve
    best = (min if sw.mode == "min" else max)(curve.values()) if curve else None
    outcome = TrialOutcome(value=best, pruned=pruning.pruned, epochs=trained.epochs,
                           curve=curve, trained=trained, cache_key=key)
    atomic_write_text(done, outcome.model_dump_json(indent=1))
    return outcome


@task(name="trial", cache_policy=NO_CACHE, persist_result=False)
def trial(
    data: DatasetRef,
    cfg: PipelineConfig,
    key: str,
    home: str,
    asked: Any,
    history: list[Any],
) -> TrialOutcome:
    """Prefect task: one trial (``asked``: its FrozenTrial; ``history``: the study's
    finished trials then), pruned against that copy of the study: no worker needs the database.

    ``key`` is :func:`trial_key` of ``data`` and ``cfg``, computed once by the flow. The trial's
    own folder is its cache (``trial.json``, read back by :func:`run_trial`), so Prefect neither
    looks up nor persists a result: that was ≈ 10 ms a trial for a second copy of it.
    """
    import optuna

    from tasks.settings import stage_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_trial(data, cfg, stage_dir("trial", Path(home)) / key, key, asked, history)
