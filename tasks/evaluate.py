"""Stage 3: test the best checkpoint with synced metrics in the same device setup as training.

The test metrics are logged to the training run in MLflow. The cache key hashes the checkpoint's
content, the data content, the evaluation and trainer sections and the code version.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from flows.config import PipelineConfig
from tasks.train import dataloader, import_class, make_trainer, mlflow_logger
from tasks.types import DatasetRef, EvalReport, StageError, TrainResult, content_key

CODE_VERSION = "evaluate-1"

_ALIASES = {
    "accuracy": ("acc", "accuracy"),
    "f1": ("f1",),
    "precision": ("precision",),
    "recall": ("recall",),
    "mse": ("mse",),
    "mae": ("mae",),
}


def stage_key(trained: TrainResult, data: DatasetRef, cfg: PipelineConfig) -> str:
    """Cache key: checkpoint and data content, evaluation and trainer sections, code version."""
    return content_key(
        {
            "stage": "evaluate",
            "code": CODE_VERSION,
            "checkpoint": trained.checkpoint_sha256,
            "data": data.content_hash,
            "evaluation": cfg.evaluation.digest(),
            "trainer": cfg.trainer.digest(),
        }
    )


def _wanted(name: str, metrics: list[str]) -> bool:
    base = name.removeprefix("test_")
    return name == "test_loss" or any(base in _ALIASES[m] for m in metrics)


def run_evaluation(
    trained: TrainResult, data: DatasetRef, cfg: PipelineConfig, key: str, track: bool = True
) -> EvalReport:
    """Run the stage without Prefect."""
    cls = import_class(cfg.model.class_path)
    module = cls.load_from_checkpoint(str(trained.checkpoint))
    tc = cfg.trainer
    test_dl = dataloader(data, "test", tc.batch_size, False, tc.seed)
    logger = None
    if track and trained.mlflow_run_id:
        logger = mlflow_logger(
            cfg.tracking, "evaluate", {}, run_id=trained.mlflow_run_id, plots=False
        )
    trainer = make_trainer(tc, Path(trained.checkpoint).parent.parent, logger, checkpoint=False)
    out = trainer.test(module, test_dl)
    logged = {k: float(v) for d in out for k, v in d.items()}
    gate = cfg.evaluation.gate
    if gate.metric not in logged:
        raise StageError(
            f"evaluation.gate.metric: {gate.metric!r} was not logged by "
            f"{cls.__name__}.test_step (logged: {', '.join(sorted(logged)) or 'nothing'})"
        )
    metrics = {k: v for k, v in logged.items() if _wanted(k, cfg.evaluation.metrics)}
    metrics[gate.metric] = logged[gate.metric]
    return EvalReport(
        metrics=metrics,
        gate_metric=gate.metric,
        gate_value=logged[gate.metric],
        checkpoint_sha256=trained.checkpoint_sha256,
        mlflow_run_id=trained.mlflow_run_id,
        cache_key=key,
        code_version=CODE_VERSION,
    )


def _cache_key(context: object, params: dict) -> str:
    return "evaluate-" + stage_key(params["trained"], params["data"], params["cfg"])


@task(name="evaluate", cache_key_fn=_cache_key, persist_result=True)
def evaluate(trained: TrainResult, data: DatasetRef, cfg: PipelineConfig) -> EvalReport:
    """Prefect task: test the best checkpoint; returns the metrics and the gate value."""
    return run_evaluation(trained, data, cfg, stage_key(trained, data, cfg))
