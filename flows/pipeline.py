"""The training pipeline: one Prefect flow chaining the stages of tasks/.

Each stage is a Prefect task whose cache key is an explicit content hash (its input hashes, its
config section and its code version), with results persisted under ``<project>/.trainflow/``.
So a rerun with nothing changed is served from cache, a rerun after a failure runs only the
failed stage and what follows, and a change to one config section reruns that stage onward.
Transient errors are retried with delays (``retries.<stage>``); config and data errors are not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tasks.settings import configure_environment, home_dir, project_lock, results_dir

configure_environment()  # before prefect is imported: PREFECT_HOME inside the project

from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.states import State  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from flows.stage_cache import checked_cache_key  # noqa: E402
from tasks.config import PipelineConfig, StageRetry, load_config  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.export import export  # noqa: E402
from tasks.prepare_data import prepare_data  # noqa: E402
from tasks.register import promote, register  # noqa: E402
from tasks.train import train  # noqa: E402
from tasks.types import (  # noqa: E402
    DatasetRef,
    EvalReport,
    ExportRef,
    RegistryRef,
    TrainResult,
    retry_transient,
)


class StageRecord(BaseModel):
    """How one stage went in this run."""

    state: str  # Completed, Cached, Failed
    seconds: float
    cache_key: str | None = None


class PipelineResult(BaseModel):
    """What a pipeline run produced (returned by the flow, shown by the CLI)."""

    stages: dict[str, StageRecord] = Field(default_factory=dict)
    data: DatasetRef | None = None
    trained: TrainResult | None = None
    report: EvalReport | None = None
    exported: ExportRef | None = None
    registered: RegistryRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    home: Path
    flow_run_id: str | None = None


def _with_policy(task: Any, retry: StageRetry, home: Path, store: str | None = None) -> Any:
    """The stage task with our retry policy and a cache that is data (JSON records of our
    stage types, checked before use: flows/stage_cache.py)."""
    cached = task.cache_key_fn is not None
    options: dict[str, Any] = {
        "result_storage": results_dir(home),
        "persist_result": cached,
        "result_serializer": "json",
        "retries": retry.retries,
        "retry_delay_seconds": list(retry.delays) or 0,
        "retry_condition_fn": retry_transient,
    }
    if cached:
        options["cache_key_fn"] = checked_cache_key(task, results_dir(home), store)
    return task.with_options(**options)


def _run(
    name: str, task: Any, retry: StageRetry, home: Path, result: PipelineResult, store: str,
    *args: Any,
) -> Any:
    """Run a stage; a cached output is served only if still true (flows/stage_cache.py)."""
    t0 = time.perf_counter()
    state: State = _with_policy(task, retry, home, store)(*args, return_state=True)
    if not state.is_completed():
        result.stages[name] = StageRecord(
            state=state.name or "Failed", seconds=round(time.perf_counter() - t0, 3)
        )
    value = state.result()  # raises the stage's error: later stages do not run
    result.stages[name] = StageRecord(
        state=state.name or state.type.value,
        seconds=round(time.perf_counter() - t0, 3),
        cache_key=getattr(value, "cache_key", None),
    )
    return value


def _summary_markdown(cfg: PipelineConfig, result: PipelineResult) -> str:
    lines = ["# trainflow pipeline run", "", "| stage | state | seconds |", "|---|---|---|"]
    for name, rec in result.stages.items():
        lines.append(f"| {name} | {rec.state} | {rec.seconds:.2f} |")
    if result.data is not None:
        rows = ", ".join(f"{k} {v.rows}" for k, v in result.data.splits.items())
        lines += ["", f"**Data** `{result.data.content_hash[:12]}` ({rows})"]
    if result.metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(result.metrics.items())]
    if result.report is not None:
        g = cfg.evaluation.gate
        lines += ["", f"**Gate** {g.metric} = {result.report.gate_value:.4f} ({g.mode}, "
                  f"min_delta {g.min_delta:g})"]
    if result.registered is not None:
        reg = result.registered
        verdict = "promoted to @" + (reg.alias or "") if reg.promoted else "not promoted"
        lines += [f"**Registry** `{reg.name}` version {reg.version}: {verdict} ({reg.decision})"]
    if result.trained is not None and result.trained.mlflow_run_id:
        lines += [f"**MLflow run** `{result.trained.mlflow_run_id}`"]
    lines += ["", f"Model `{cfg.model.class_path}`; home `{result.home}`"]
    return "\n".join(lines)


@flow(name="training-pipeline", log_prints=False)
def training_pipeline(
    config: PipelineConfig | str | None = None, overrides: list[str] | None = None
) -> PipelineResult:
    """Prepare the data, then every stage that follows; returns what was produced.

    ``config`` is a validated PipelineConfig, a YAML path, or None (the shipped example).
    ``overrides`` are ``key.path=value`` strings applied to a YAML config.
    """
    from prefect.runtime import flow_run

    if isinstance(config, PipelineConfig):
        cfg = config
        if overrides:
            from tasks.config import apply_overrides, validate_config

            cfg = validate_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
    else:
        cfg = load_config(config, overrides)
    if cfg.tracking.uri is None:  # resolve once: every stage then uses the same store
        from trainer.loggers.mlflow_store import resolve_tracking_uri

        tracking = cfg.tracking.model_copy(update={"uri": resolve_tracking_uri(None)})
        cfg = cfg.model_copy(update={"tracking": tracking})
    from trainer.loggers.mlflow_store import store_identity

    home = home_dir()
    store = store_identity(cfg.tracking.uri)  # fails fast on a bad store; a new store: new keys
    result = PipelineResult(home=home, flow_run_id=flow_run.get_id())
    with project_lock(home):  # one pipeline run per project folder at a time
        return _stages(cfg, home, store, result)


def _stages(cfg: PipelineConfig, home: Path, store: str, result: PipelineResult) -> PipelineResult:
    """Every stage in order; a failed one raises (its successors do not run)."""
    r = cfg.retries
    try:
        data = _run(
            "prepare_data", prepare_data, r.prepare_data, home, result, store, cfg.data, str(home)
        )
        result.data = data
        trained = _run("train", train, r.train, home, result, store, data, cfg, str(home))
        result.trained = trained
        report = _run("evaluate", evaluate, r.evaluate, home, result, store, trained, data, cfg)
        result.report = report
        result.metrics = dict(report.metrics)
        exported = _run("export", export, r.export, home, result, store, trained, cfg, str(home))
        result.exported = exported
        if cfg.registry.enabled:
            registered = _run(
                "register", register, r.registry, home, result, store,
                trained, report, exported, cfg, data,
            )
            result.registered = _run(
                "promote", promote, r.registry, home, result, store, registered, cfg
            )
    finally:
        create_markdown_artifact(
            key="training-pipeline-summary",
            markdown=_summary_markdown(cfg, result),
            description="trainflow: stages, metrics, gate decision, MLflow run, registry version",
        )
    return result
