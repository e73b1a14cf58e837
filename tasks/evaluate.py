"""Stage 3: test the best checkpoint and compute the metrics ``evaluation.metrics`` names.

The stage runs the model's own ``test_step`` (its logged ``test_loss`` is kept) in the same device
setup as training, and beside it a callback feeds the model's predictions on each test batch to
``trainer.metrics`` objects: accuracy, f1, precision, recall (macro over classes) and auroc for
classification, mse, rmse, mae and r2 for regression. Under DDP each rank updates its metrics on
its share of the test split and ``compute()`` syncs them, so the figures cover the whole split.

The test metrics are logged to the training run in MLflow. The cache key hashes the checkpoint's
content, the data content, the evaluation and trainer sections and the code version.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.config import PipelineConfig
from tasks.imports import build_datamodule
from tasks.train import dataloader, import_class, make_trainer, mlflow_logger
from tasks.types import DatasetRef, EvalReport, StageError, TrainResult, content_key

CODE_VERSION = "evaluate-2"


def stage_key(trained: TrainResult, data: DatasetRef, cfg: PipelineConfig) -> str:
    """Cache key: checkpoint and data content, evaluation and trainer sections, code version."""
    return content_key(
        {
            "stage": "evaluate",
            "code": CODE_VERSION,
            "checkpoint": trained.checkpoint_sha256,
            "data": data.content_hash,
            "evaluation": cfg.evaluation.digest(),
            "datamodule": cfg.data.datamodule,
            "trainer": cfg.trainer.digest(),
        }
    )


def run_evaluation(
    trained: TrainResult, data: DatasetRef, cfg: PipelineConfig, key: str, track: bool = True
) -> EvalReport:
    """Run the stage without Prefect."""
    cls = import_class(cfg.model.class_path)
    module = cls.load_from_checkpoint(str(trained.checkpoint))
    tc = cfg.trainer
    dm = build_datamodule(cfg.data.datamodule, data, tc) if cfg.data.datamodule else None
    test_dl = dataloader(data, "test", tc.batch_size, False, tc.seed) if dm is None else None
    logger = None
    if track and trained.mlflow_run_id:
        logger = mlflow_logger(
            cfg.tracking, "evaluate", {}, run_id=trained.mlflow_run_id, plots=False
        )
    from tasks.eval_metrics import NamedMetrics  # torch: not on a cached run's path

    computed = NamedMetrics(cfg.evaluation.metrics, data.task, data.num_classes)
    trainer = make_trainer(
        tc, Path(trained.checkpoint).parent.parent, logger, checkpoint=False, callbacks=[computed]
    )
    out = trainer.test(module, test_dl, datamodule=dm, verbose=False)  # the CLI prints the summary
    logged = {k: float(v) for d in out for k, v in d.items()}
    # the model's own test_loss is kept; every named metric is the stage's own computation
    metrics = {k: v for k, v in logged.items() if k == "test_loss"}
    metrics.update(computed.values)
    gate = cfg.evaluation.gate
    if gate.metric not in metrics:  # tasks/config.py refuses this; a config built otherwise
        raise StageError(
            f"evaluation.gate.metric: {gate.metric!r} is not among the computed metrics "
            f"({', '.join(sorted(metrics))}); add it to evaluation.metrics"
        )
    return EvalReport(
        metrics=metrics,
        gate_metric=gate.metric,
        gate_value=metrics[gate.metric],
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
