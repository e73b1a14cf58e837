"""trainflow metrics: a Metric base with one-collective-per-bucket sync, classification,
regression and aggregation metrics checked against scikit-learn, and MetricCollection."""

from trainer.metrics import functional
from trainer.metrics.aggregation import CatMetric, MaxMetric, MeanMetric, MinMetric, SumMetric
from trainer.metrics.classification import (
    AUROC,
    Accuracy,
    AveragePrecision,
    ConfusionMatrix,
    F1Score,
    FBetaScore,
    Precision,
    Recall,
    Specificity,
)
from trainer.metrics.collection import MetricCollection
from trainer.metrics.functional.classification import UndefinedMetricWarning
from trainer.metrics.metric import Metric, sync_metrics
from trainer.metrics.regression import (
    ExplainedVariance,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredError,
    PearsonCorrCoef,
    R2Score,
)
from trainer.metrics.sync import MetricSyncError

__all__ = [
    "AUROC",
    "Accuracy",
    "AveragePrecision",
    "CatMetric",
    "ConfusionMatrix",
    "ExplainedVariance",
    "F1Score",
    "FBetaScore",
    "MaxMetric",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanMetric",
    "MeanSquaredError",
    "Metric",
    "MetricCollection",
    "MetricSyncError",
    "MinMetric",
    "PearsonCorrCoef",
    "Precision",
    "R2Score",
    "Recall",
    "Specificity",
    "SumMetric",
    "UndefinedMetricWarning",
    "functional",
    "sync_metrics",
]
