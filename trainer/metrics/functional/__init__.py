"""Functional forms of the metrics (the classes use the same code)."""

from trainer.metrics.functional.classification import (
    UndefinedMetricWarning,
    accuracy,
    auroc,
    average_precision,
    confusion_matrix,
    f1_score,
    fbeta_score,
    precision,
    recall,
    specificity,
)
from trainer.metrics.functional.regression import (
    explained_variance,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    pearson_corrcoef,
    r2_score,
)

__all__ = [
    "UndefinedMetricWarning",
    "accuracy",
    "auroc",
    "average_precision",
    "confusion_matrix",
    "explained_variance",
    "f1_score",
    "fbeta_score",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "pearson_corrcoef",
    "precision",
    "r2_score",
    "recall",
    "specificity",
]
