"""The sweep flow: an Optuna study whose trials are cached Prefect tasks, pruned by the
Trainer, the best one promoted through the pipeline's own stages.

One ``prepare_data`` serves every trial. Trials are asked from the study in rounds of
``parallel``, run as Prefect tasks on a task runner (threads, processes or a Dask cluster),
then told back: the sampler sees the same history whatever order the workers finish in, so a
seeded sweep asks the same trials every time. The study lives in a database (SQLite in the
project by default, any SQLAlchemy URL such as the team's PostgreSQL): rerunning the command
continues it up to ``trials`` finished ones, and a trial the last run left running (killed) is
asked again with the same parameters, so it resumes from its checkpoint. One process runs a
study at a time (``flows/sweep_lock.py``). The flow takes a YAML path and overrides, like the
pipeline, and starts its own task runner, so ``trainflow serve --sweep`` and the deployments
schedule it unchanged.

The study is asked and told in memory and written through to its database
(``flows/sweep_study.py``); a trial is pruned against a copy of the study's finished trials and
touches no database (``tasks/trial.py``); what a round told (the trials' ends in the study's
database, their MLflow child runs from ``curves.jsonl``: ``flows/sweep_runs.py``) is written on
one background thread while the next round trains, started once it is asked and submitted. What a
trial costs beyond its fit: ``bench/sweep.py``, ``bench/RESULTS.md``. Per trial (16 × 15
epochs, one at a time, 2 shared cores; medians of the per-trial timestamps): the ask 2 ms, its
RUNNING row 3-9 ms (one transaction of SQLAlchemy ORM), the tell 0.2 ms, the Prefect task's
start 3-10 ms and end ≈ 4 ms, the trial's config and key ≈ 4 ms; 25-40 ms a trial outside its
fit, against 60-70 ms before (the asks and tells on the database: 22-35 and 8-15 ms, ≈ 47 round
trips). Tried and dropped: the writes in a child process of their own (spared the GIL, but
≈ 4 s of CPU to start it, and on busy cores the per-trial overhead rose from 14 to 36-68 %).
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tasks.settings import configure_environment, home_dir, stage_dir

configure_environment()  # before prefect is imported: PREFECT_HOME inside the project

from optuna.trial import TrialState  # noqa: E402
from prefect import flow  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from flows.pipeline import PipelineResult, _run  # noqa: E402
from flows.sweep import (  # noqa: E402
    check_space,
    default_storage,
    distributions,
    study_name,
    sweep_section,
    with_params,
)
from flows.sweep_lock import study_lock  # noqa: E402
from flows.sweep_runs import ChildRuns  # noqa: E402
from flows.sweep_study import SweepStudy  # noqa: E402
from tasks.config import PipelineConfig, load_config  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.export import export  # noqa: E402
from tasks.prepare_data import prepare_data  # noqa: E402
from tasks.register import promote, register  # noqa: E402
from tasks.trial import TrialOutcome, trial_key  # noqa: E402
from tasks.types import RegistryRef, StageError  # noqa: E402

SHIPPED = Path(__file__).resolve().parent.parent / "configs" / "sweep.yaml"


def open_study(cfg: PipelineConfig, storage: str, name: str) -> SweepStudy:
    """The study, loaded from its database into memory (created there on the first run)."""
    import optuna

    from tasks.trial import make_pruner

    sweep = sweep_section(cfg)
    seed = cfg.trainer.seed
    if sweep.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.startup_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return SweepStudy(storage, name, sampler, make_pruner(sweep),
                      "minimize" if sweep.mode == "min" else "maximize")


# ------------------------------------------------------------------------------- the flow


def task_runner(parallel: int, dask_address: str | None = None) -> Any:
    """Threads for one trial at a time, processes for several, a Dask cluster when named.

    Several trials run in processes because each seeds torch's global RNG: threads would share it.
    """
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1) if parallel == 1 else ProcessPoolTaskRunner(
        max_workers=parallel)


class TrialRecord(BaseModel):
    """How one trial went in this run: ``cached`` means its fit was served from cache."""

    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # complete, pruned
    epochs: int
    cached: bool


class SweepResult(BaseModel):
    """What a sweep run did (returned by the flow, shown by the CLI)."""

    study_name: str
    storage: str
    trials: list[TrialRecord] = Field(default_factory=list)  # the ones this run finished
    finished: int = 0  # complete + pruned in the study
    best_number: int | None = None
    best_params: dict[str, Any] = Field(default_factory=dict)
    best_value: float | None = None
    parent_run_id: str | None = None
    trial_seconds: float = 0.0  # wall time of the trial rounds (asks, trials, tells, logging)
    pipeline: PipelineResult


@functools.cache
def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri, uri)


def _tracking_client(cfg: PipelineConfig) -> Any:
    """One MLflow client per store for the whole sweep (not one per call)."""
    return _client(cfg.tracking.uri)


def _parent_run(cfg: PipelineConfig, study: SweepStudy, name: str) -> str:
    """The sweep's MLflow run (created once per study; a rerun continues it)."""
    from trainer.loggers.mlflow_store import get_or_create_experiment

    client = _tracking_client(cfg)
    prior = study.study.user_attrs.get("mlflow_parent_run_id")
    if prior:
        return prior
    exp = get_or_create_experiment(client, cfg.tracking.experiment, cfg.tracking.uri)
    run = client.create_run(exp, run_name=name, tags={"trainflow.sweep": name})
    sweep = sweep_section(cfg)
    client.log_param(run.info.run_id, "sweep.space", json.dumps(
        {k: v.model_dump(exclude_none=True) for k, v in sweep.space.items()}, sort_keys=True))
    for k in ("objective", "mode", "sampler", "pruner"):
        client.log_param(run.info.run_id, f"sweep.{k}", str(getattr(sweep, k)))
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _tell(study: SweepStudy, t: Any, outcome: TrialOutcome) -> Any:
    """Record the outcome with its curve (the worker reported it to its own copy of the study);
    returns the finished trial."""
    if outcome.pruned:
        return study.tell(t, state=TrialState.PRUNED, curve=outcome.curve)
    if outcome.value is None:
        study.tell(t, state=TrialState.FAIL, curve=outcome.curve)
        raise StageError(f"sweep.objective: trial {t.number} never validated; set data.split.val")
    return study.tell(t, outcome.value, curve=outcome.curve)


def _log_summary(cfg: PipelineConfig, study: Any, run_id: str) -> None:
    """Best params and value, and Optuna's history and importance plots, on the sweep's run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    client = _tracking_client(cfg)
    best = study.best_trial
    for k, v in best.params.items():
        client.set_tag(run_id, f"best.{k}", str(v))
    client.set_tag(run_id, "best.trial", str(best.number))
    client.log_metric(run_id, "best_value", float(best.value))
    plots = {"optuna/history.png": ovm.plot_optimization_history}
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) > 1:
        plots["optuna/importances.png"] = ovm.plot_param_importances  # needs two to compare
    for path, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings of optuna's matplotlib API
            ax = plot(study)
        fig = ax.figure
        fig.tight_layout()
        client.log_figure(run_id, fig, path)
        plt.close(fig)


def _tag_lineage(cfg: PipelineConfig, ref: RegistryRef, name: str, number: int, run: str) -> None:
    client = _tracking_client(cfg)
    for k, v in {"sweep": name, "trial": str(number), "sweep_run_id": run}.items():
        client.set_model_version_tag(ref.name, ref.version, f"trainflow.{k}", v)


def _resolved(cfg: PipelineConfig, overrides: list[str] | None) -> PipelineConfig:
    """``cfg`` with ``overrides`` applied and the MLflow store resolved once, so every trial
    uses the same one."""
    if overrides:
        from tasks.config import apply_overrides, validate_config

        cfg = validate_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
    if cfg.tracking.uri is None:
        from trainer.loggers.mlflow_store import resolve_tracking_uri

        tracking = cfg.tracking.model_copy(update={"uri": resolve_tracking_uri(None)})
        cfg = cfg.model_copy(update={"tracking": tracking})
    return cfg


@flow(name="sweep", log_prints=False)
def sweep_flow(
    config: PipelineConfig | str | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
    dask_address: str | None = None,
) -> SweepResult:
    """Run the study to ``sweep.trials`` finished trials, then promote the best like ``run``.

    ``config``: a PipelineConfig, a YAML path or None (``configs/sweep.yaml``); ``overrides``:
    ``key=value`` strings (``--set``); ``storage``: the study's database URL (default: the
    config's, else SQLite in the project); ``dask_address``: run trials on that Dask scheduler.
    Parameters a schedule can carry, so ``trainflow serve --sweep`` and the deployments run it.
    """
    if not isinstance(config, PipelineConfig):  # a YAML path (what a schedule carries) or None
        config, overrides = load_config(config or SHIPPED, overrides or []), None
    cfg = _resolved(config, overrides)
    check_space(cfg)
    sweep = sweep_section(cfg)
    storage = storage or sweep.storage or default_storage(home_dir())
    name = study_name(cfg)
    with study_lock(storage, name):  # one sweep process per study (flows/sweep_lock.py)
        return _sweep(cfg, storage, name, task_runner(sweep.parallel, dask_address))


def _sweep(cfg: PipelineConfig, storage: str, name: str, runner: Any) -> SweepResult:
    from prefect.runtime import flow_run

    from tasks.trial import trial as trial_task
    from trainer.loggers.mlflow_store import store_identity

    store = store_identity(cfg.tracking.uri)  # part of the keys of the stages writing to it
    sweep = sweep_section(cfg)
    home = home_dir()
    study = open_study(cfg, storage, name)  # ask, tell through it; read study.study
    pipe = PipelineResult(home=home, flow_run_id=flow_run.get_id())
    out = SweepResult(study_name=name, storage=storage, pipeline=pipe)
    r = cfg.retries

    data = _run(
        "prepare_data", prepare_data, r.prepare_data, home, pipe, store, cfg.data, str(home)
    )
    pipe.data = data
    out.parent_run_id = parent = _parent_run(cfg, study, name)
    space = distributions(sweep)

    def folder_of(t: Any) -> tuple[Path, str]:  # its key follows from its params
        key = trial_key(data, with_params(cfg, t.params))
        return stage_dir("trial", home) / key, key

    # Rounds of `parallel` trials: asked together, told together, so the sampler's history at
    # each ask does not depend on which worker finished first.
    runs = ChildRuns(_tracking_client(cfg), parent, name)
    t0 = time.perf_counter()
    # One background thread writes what each round told (the trials' ends into the study's
    # database, then their child runs) while the next round trains; leaving the block waits for
    # what it was given, whatever happened.
    with ThreadPoolExecutor(1, thread_name_prefix="sweep-writes") as writer:
        try:
            with runner:  # started here whatever the flow's own runner is (a schedule: default)
                while (todo := sweep.trials - _finished(study.study)) > 0:
                    _round(cfg, study, space, min(sweep.parallel, todo), runner, trial_task,
                           data, home, runs, writer, out)
        finally:  # the trials told are written whatever happened
            study.start_writes(writer)
            runs.start_writes(writer)
        study.close(writer)  # a failed write is raised here
        child_runs = runs.close(writer, study.study, folder_of, data.content_hash)
    out.trial_seconds = time.perf_counter() - t0
    out.finished = _finished(study.study)

    best = study.study.best_trial
    out.best_number, out.best_params, out.best_value = best.number, best.params, best.value
    _log_summary(cfg, study.study, parent)
    bcfg = with_params(cfg, best.params)
    outcome = TrialOutcome.model_validate_json((folder_of(best)[0] / "trial.json").read_text())
    # evaluate logs into the best trial's child run, as the train stage's run in `run`
    trained = pipe.trained = outcome.trained.model_copy(
        update={"mlflow_run_id": child_runs.get(best.number)})
    report = pipe.report = _run(
        "evaluate", evaluate, r.evaluate, home, pipe, store, trained, data, bcfg
    )
    pipe.metrics = dict(report.metrics)
    exported = pipe.exported = _run(
        "export", export, r.export, home, pipe, store, trained, bcfg, str(home)
    )
    if bcfg.registry.enabled:
        registered = _run(
            "register", register, r.registry, home, pipe, store, trained, report, exported,
            bcfg, data,
        )
        _tag_lineage(bcfg, registered, name, best.number, parent)
        pipe.registered = _run(
            "promote", promote, r.registry, home, pipe, store, registered, bcfg
        )
    _tracking_client(cfg).set_terminated(parent)
    return out


def _round(
    cfg: PipelineConfig, study: SweepStudy, space: dict[str, Any], n: int, runner: Any,
    task: Any, data: Any, home: Path, runs: ChildRuns, writer: Executor, out: SweepResult,
) -> None:
    """Ask ``n`` trials, run them at once on ``runner``, tell their outcomes in asked order;
    their child runs are queued on ``runs``.

    A trial whose folder already holds its ``trial.json`` is served from it (``cached``): the
    task reads it back instead of fitting. Each trial is pruned against the study's finished
    trials as the round starts (the median pruner looks at COMPLETE ones only, and they change
    only between rounds), so no worker needs the database.
    """
    history = study.study.get_trials(deepcopy=False,
                                     states=(TrialState.COMPLETE, TrialState.PRUNED))
    running = []
    for t, asked in study.ask(space, n):
        tcfg = with_params(cfg, t.params)
        key = trial_key(data, tcfg)  # once per trial: the task and the flow both use it
        folder = stage_dir("trial", home) / key
        # Not wrapped in prefect's quote() (Prefect would not walk the config, ≈ 2 ms): Dask
        # turns it into a plain tuple.
        params = {"data": data, "cfg": tcfg, "key": key, "home": str(home), "asked": asked,
                  "history": history}
        cached = (folder / "trial.json").exists()
        running.append((t, folder, cached, runner.submit(task, params)))
    # The last round's database rows and child runs are written while this one trains; started
    # before these asks, their writes held the study database's write lock the asks wait for.
    study.start_writes(writer)
    runs.start_writes(writer)
    for t, folder, cached, fut in running:
        fut.wait()
        try:
            outcome = fut.result()
        except BaseException:
            study.tell(t, state=TrialState.FAIL)
            raise
        finished = _tell(study, t, outcome)
        state = "pruned" if outcome.pruned else "complete"
        runs.add(finished, folder, state, data.content_hash, outcome.cache_key)
        out.trials.append(TrialRecord(
            number=t.number, params=t.params, value=outcome.value, epochs=outcome.epochs,
            state=state, cached=cached))


def run_sweep(
    cfg: PipelineConfig, storage: str | None = None, dask_address: str | None = None
) -> SweepResult:
    """Run the sweep flow (the CLI's and the tests' entry point)."""
    return sweep_flow(cfg, None, storage, dask_address)
