"""The metrics ``evaluation.metrics`` names, computed by a callback beside the model's test step.

Its own module so that importing the evaluate stage (a cached run does) imports no torch.
"""

from __future__ import annotations

from typing import Any

from tasks.config import metric_key
from trainer.callbacks import Callback


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
