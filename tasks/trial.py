"""One sweep trial: fit a trial's resolved config, report the objective to its Optuna trial at
each validation, and stop early when the study's pruner says so.

The trial's outputs live in ``<home>/stages/trial/<key>/`` where ``key`` hashes what the train
stage's key hashes (data, model and trainer sections, code) plus the objective and the pruner:
a rerun of the same trial is served from cache, and a trial killed mid-fit resumes from its
``last.ckpt`` like the train stage. A pruned fit lives in its own folder, never in the train
stage's, so ``trainflow run`` with the same config never picks up a model cut short.

Nothing in a trial waits for a database commit (each waits 10-35 ms for the disk on SQLite,
a dozen per trial were half a 15-epoch trial's overhead): the Trainer logs into ``curves.jsonl``
in the trial's folder (the flow writes the MLflow child run from it, off the trials' path:
``flows/sweep_runs.py``), and the objective's reports go to the study on a background thread,
all written before the trial returns.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Report ``monitor`` to an Optuna trial after each validation; stop when it should prune.

    Lightning's integration raises ``TrialPruned`` from ``on_validation_end``; here the fit ends
    cleanly instead (``trainer.should_stop``), so the checkpoint and the curves are closed as
    usual, and the caller tells Optuna the trial was pruned. The pruner decides on the curve
    kept here; the reports are written to the study on a background thread (a commit each),
    and :meth:`wait` (before the trial is told) has them all in, or raises the first error.
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.curve: dict[int, float] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._writes: list[Future[Any]] = []

    def __getstate__(self) -> dict[str, Any]:  # pickled to DDP workers: no thread
        return {**self.__dict__, "_writer": None, "_writes": []}

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
        import optuna

        step, value = int(trainer.current_epoch), float(value)
        self.curve[step] = value
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="optuna-report")
        self._writes.append(self._writer.submit(self.trial.report, value, step))
        # What Trial.should_prune() asks the pruner, on this curve instead of the stored one.
        seen = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params=self.trial.params,
            distributions=self.trial.distributions, intermediate_values=dict(self.curve))
        if self.trial.study.pruner.prune(self.trial.study, seen):
            self.pruned = True
            trainer.should_stop = True

    def wait(self) -> None:
        """Until every report is in the study; the first failed one is raised here."""
        writes, self._writes = self._writes, []
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        for w in writes:
            w.result()


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


@functools.cache
def open_storage(url: str) -> Any:
    """The study database, opened once per process and shared by its threads.

    Opening one checks its schema with alembic (≈ 0.3 s): once per trial it was a third of a
    small trial's overhead. A SQLite file is switched to write-ahead logging (kept in the file)
    and its connections to ``synchronous=NORMAL``: each report (one per epoch) and tell commits
    without waiting for the disk (10-40 ms each with the rollback journal on a busy machine).
    A crash of the process loses nothing; a power cut may lose the last reports, never the
    file's consistency, and a trial that lost its end is asked again.
    """
    import optuna

    db = url.removeprefix("sqlite:///")
    sqlite = db != url and "?" not in db and db != ":memory:"
    if sqlite:
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    rdb = optuna.storages.RDBStorage(url)
    if sqlite:
        from sqlalchemy import event

        def _no_wait(conn: Any, _record: Any) -> None:
            conn.execute("PRAGMA synchronous=NORMAL")

        event.listen(rdb.engine, "connect", _no_wait)
        rdb.engine.dispose()  # the connections opened while checking the schema lack it
    return optuna.storages.get_storage(rdb)


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
    data: DatasetRef, cfg: PipelineConfig, root: Path, key: str, trial: Any
) -> TrialOutcome:
    """Fit one trial into ``root`` without Prefect (resumes; a finished one is read back)."""
    done = root / "trial.json"
    if done.exists():
        return TrialOutcome.model_validate_json(done.read_text())
    sw = cfg.sweep or SweepConfig()
    pruning = OptunaPruning(trial, sw.objective)
    root.mkdir(parents=True, exist_ok=True)
    try:
        trained = fit(data, cfg, root, key, track=False, callbacks=[pruning],
                      logger=CurvesLogger(root))
    except BaseException:
        with contextlib.suppress(Exception):  # the fit's error is the one to raise
            pruning.wait()
        raise
    pruning.wait()  # the reports are in the study before it is told
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
    storage: str,
    study_name: str,
    trial_id: int,
) -> TrialOutcome:
    """Prefect task: one trial, reporting to the study in ``storage`` (any worker can reach it).

    ``key`` is :func:`trial_key` of ``data`` and ``cfg``, computed once by the flow. The trial's
    own folder is its cache (``trial.json``, read back by :func:`run_trial`), so Prefect neither
    looks up nor persists a result: that was ≈ 10 ms a trial for a second copy of it.
    """
    import optuna

    from tasks.settings import stage_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage),
                              pruner=make_pruner(cfg.sweep or SweepConfig()))
    return run_trial(data, cfg, stage_dir("trial", Path(home)) / key, key,
                     optuna.trial.Trial(study, trial_id))
