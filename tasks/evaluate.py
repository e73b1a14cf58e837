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
from typing import Any

from prefect import task

from tasks.config import PipelineConfig, metric_key
from tasks.imports import build_datamodule
from tasks.train import dataloader, import_class, make_trainer, mlflow_logger
from tasks.types import DatasetRef, EvalReport, StageError, TrainResult, content_key
from trainer.callbacks import Callback

CODE_VERSION = "evaluate-2"


def build_metric(name: str, num_classes: int | None) -> Any:
    """The ``trainer.metrics`` object for a metric name of ``evaluation.metrics``."""
    from trainer import metrics as M

    if name in ("accuracy", "f1", "precision", "recall"):
        cls = {"accuracy": M.Accuracy, "f1": M.F1Score, "precision": M.Precision,
               "recall": M.Recall}[name]
        # accuracy: the share of rows right (micro); the others: the mean over classes (macro)
        average = "micro" if name == "accuracy" else "macro"
        return cls(task="multiclass", num_classes=num_classes, average=average)
    if name == "auroc":
        if num_classes == 2:  # the positive class's score, as sklearn's roc_auc_score
            return M.AUROC(task="binary")
        return M.AUROC(task="multiclass", num_classes=num_classes, average="macro")
    if name in ("mse", "rmse"):
        return M.MeanSquaredError(squared=name == "mse")
    if name == "mae":
        return M.MeanAbsoluteError()
    if name == "r2":
        return M.R2Score()
    raise ValueError(f"evaluation.metrics: unknown metric {name!r}")


class NamedMetrics(Callback):
    """Computes the named metrics from the module's predictions on each test batch.

    The values end up in ``values`` (``test_acc``, ``test_r2`` ...); ``state_dict`` carries them
    from rank 0 of a DDP job back to the caller's trainer.
    """

    def __init__(self, names: list[str], task: str, num_classes: int | None) -> None:
        self.names = list(names)
        self.task = task
        self.num_classes = num_classes
        self.metrics: dict[str, Any] = {}
        self.values: dict[str, float] = {}

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        if stage == "test":
            device = trainer.strategy.root_device
            self.metrics = {n: build_metric(n, self.num_classes).to(device) for n in self.names}

    def on_test_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        import torch

        x, y = batch[0], batch[1]
        out = module(x).float()
        if self.task == "regression":
            out = out.reshape(-1)
            y = y.float()
        for name, metric in self.metrics.items():
            if name == "auroc":
                probs = torch.softmax(out, dim=1)
                metric.update(probs[:, 1] if self.num_classes == 2 else probs, y)
            else:
                metric.update(out, y)

    def on_test_epoch_end(self, trainer: Any, module: Any) -> None:
        self.values = {metric_key(n): float(m.compute()) for n, m in self.metrics.items()}
        if trainer.is_global_zero:  # compute() synced every rank; one writes
            for lg in trainer.loggers:
                lg.log_metrics(self.values, step=0)

    def state_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.values = dict(state_dict["values"])


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
