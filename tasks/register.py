"""Stages 5 and 6: register the exported model in MLflow with its lineage, then the promotion gate.

``register`` is cached on the export's content, the evaluation metrics and the registry section
(registering the same export twice gives the same version). ``promote`` always runs: whether the
alias moves depends on the champion of the moment.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig
from tasks.types import (
    DatasetRef,
    EvalReport,
    ExportRef,
    RegistryRef,
    StageError,
    TrainResult,
    content_key,
    is_transient,
)

CODE_VERSION = "register-2"


def _schema_sha(data: DatasetRef | None) -> str | None:
    if data is None or data.schema_path is None:
        return None
    from trainer.fileio import file_sha256

    return file_sha256(data.schema_path)


def stage_key(
    exported: ExportRef, report: EvalReport, cfg: PipelineConfig, data: DatasetRef | None = None
) -> str:
    """Cache key: export content, evaluation metrics, the data's schema, registry section, code
    version."""
    return content_key(
        {
            "stage": "register",
            "code": CODE_VERSION,
            "onnx": exported.onnx_sha256,
            "torchscript": exported.torchscript_sha256,
            "metrics": report.metrics,
            "schema": _schema_sha(data),
            "registry": cfg.registry.digest(),
            "tracking": cfg.tracking.digest(),
        }
    )


def run_register(
    trained: TrainResult,
    report: EvalReport,
    exported: ExportRef,
    cfg: PipelineConfig,
    key: str,
    flow_run_id: str | None = None,
    data: DatasetRef | None = None,
) -> RegistryRef:
    """Register without Prefect; with ``data``, its schema.json goes on the version (the named
    columns and labels predict and the served model answer with)."""
    from tasks.registry import register_model

    if exported.onnx is None:
        raise StageError("registry.enabled: registering needs export.onnx: true")
    rv = _permanent_unless_transient(
        register_model,
        cfg.registry.model_name,
        exported.onnx,
        torchscript_path=exported.torchscript,
        weights_path=trained.checkpoint,
        schema_path=data.schema_path if data is not None else None,
        eval_metrics=report.metrics,
        export_metrics=exported.parity,
        export_verified=True,
        data_hash=trained.data_hash,
        config_hash=trained.config_hash,
        code_version=trained.code_version,
        flow_run_id=flow_run_id,
        run_id=trained.mlflow_run_id,
        tracking_uri=cfg.tracking.uri,
    )
    return RegistryRef(name=rv.name, version=str(rv.version), cache_key=key)


def run_promote(registered: RegistryRef, cfg: PipelineConfig) -> RegistryRef:
    """Apply the gate without Prefect: the alias moves only if the candidate beats the champion."""
    from tasks.registry import promote as registry_promote

    gate = cfg.evaluation.gate
    decision = _permanent_unless_transient(
        registry_promote,
        registered.name,
        registered.version,
        gate.metric,
        gate.mode,
        gate.min_delta,
        alias=cfg.registry.alias,
        tracking_uri=cfg.tracking.uri,
    )
    return registered.model_copy(
        update={"promoted": decision.promoted, "decision": decision.reason,
                "alias": cfg.registry.alias if decision.promoted else None}
    )


def _permanent_unless_transient(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    """Registry errors name a fix (no such run, bad name): not worth retrying, unless caused by
    an I/O or connection problem."""
    from tasks.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as err:
        cause = err.__cause__ or err.__context__
        if cause is not None and is_transient(cause) and isinstance(cause, OSError | TimeoutError):
            raise
        raise StageError(str(err)) from err


def _cache_key(context: object, params: dict) -> str:
    return "register-" + stage_key(
        params["exported"], params["report"], params["cfg"], params.get("data")
    )


@task(name="register", cache_key_fn=_cache_key, persist_result=True)
def register(
    trained: TrainResult,
    report: EvalReport,
    exported: ExportRef,
    cfg: PipelineConfig,
    data: DatasetRef | None = None,
) -> RegistryRef:
    """Prefect task: a registry version tagged with data hash, config hash, code, flow run, and
    holding the data's schema."""
    from prefect.runtime import flow_run

    key = stage_key(exported, report, cfg, data)
    return run_register(trained, report, exported, cfg, key, flow_run.get_id(), data)


@task(name="promote", cache_policy=NO_CACHE)
def promote(registered: RegistryRef, cfg: PipelineConfig) -> RegistryRef:
    """Prefect task: the promotion gate (never cached)."""
    return run_promote(registered, cfg)
