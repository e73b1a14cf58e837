"""Regression metrics: sums as states (one 'sum' all_reduce per dtype when synced)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from trainer.metrics.functional import regression as F
from trainer.metrics.metric import Metric

__all__ = [
    "ExplainedVariance",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredError",
    "PearsonCorrCoef",
    "R2Score",
]


class MeanSquaredError(Metric):
    """Mean squared error; ``squared=False`` gives the root mean squared error."""

    higher_is_better = False
    _pure_update = True

    def __init__(self, squared: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.squared = squared
        self.add_state("sum_squared_error", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch."""
        if self.validate_args:
            F.check_regression_inputs("MeanSquaredError", preds, target)
        diff = preds - target
        if diff.dim() != 1:
            diff = diff.reshape(-1)
        self._accumulate("sum_squared_error", torch.dot(diff, diff))
        self._accumulate("total", diff.numel())  # a host number inside forward: no tensor op

    def compute(self) -> Tensor:
        """MSE (or RMSE) of everything accumulated."""
        d = self.__dict__
        sse, total = d["sum_squared_error"], d["total"]
        if sse.is_cpu:  # on the host: two reads and one small tensor (no promoting divisions)
            n = int(total)
            mse = sse.item() / n if n else math.nan
            return torch.scalar_tensor(mse if self.squared else math.sqrt(mse))
        mse = sse.double() / total
        return (mse if self.squared else mse.sqrt()).float()


class MeanAbsoluteError(Metric):
    """Mean absolute error."""

    higher_is_better = False
    _pure_update = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_abs_error", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch."""
        if self.validate_args:
            F.check_regression_inputs("MeanAbsoluteError", preds, target)
        self._accumulate("sum_abs_error", (preds - target).abs().sum())
        self.__dict__["total"] = self.__dict__["total"] + target.numel()

    def compute(self) -> Tensor:
        """MAE of everything accumulated."""
        return (self.sum_abs_error / self.total).float()


class MeanAbsolutePercentageError(Metric):
    """Mean of |ŷ - y| / max(|y|, eps), sklearn ``mean_absolute_percentage_error``."""

    higher_is_better = False
    _pure_update = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_abs_pct_error", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch."""
        if self.validate_args:
            F.check_regression_inputs("MeanAbsolutePercentageError", preds, target)
        t = target.double()
        err = ((preds.double() - t).abs() / t.abs().clamp(min=F._EPS)).sum()
        self._accumulate("sum_abs_pct_error", err)
        self.__dict__["total"] = self.__dict__["total"] + target.numel()

    def compute(self) -> Tensor:
        """MAPE of everything accumulated (a fraction, not a percent)."""
        return (self.sum_abs_pct_error / self.total).float()


class _MomentsMetric(Metric):
    _pure_update = True

    def __init__(self, num_outputs: int = 1, multioutput: str = "uniform_average",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"{name}.num_outputs: must be an int >= 1 (got {num_outputs!r})")
        F.check_multioutput(name, multioutput)
        self.num_outputs = num_outputs
        self.multioutput = multioutput
        self.add_state("moments", torch.zeros(7, num_outputs, dtype=torch.float64), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch: (N,) for one output, (N, num_outputs) for several."""
        name = type(self).__name__
        if self.validate_args:
            F.check_regression_inputs(name, preds, target)
            d = preds.shape[1] if preds.dim() == 2 else 1
            if preds.dim() > 2 or d != self.num_outputs:
                raise ValueError(
                    f"{name}: expected preds of shape (N,) or (N, {self.num_outputs}) for "
                    f"num_outputs={self.num_outputs} (got {tuple(preds.shape)})"
                )
        self._accumulate("moments", F.moments_update(preds, target))


class R2Score(_MomentsMetric):
    """Coefficient of determination, sklearn ``r2_score`` (force_finite)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        """R² of everything accumulated."""
        return F.r2_from_moments(self.moments, self.multioutput)


class ExplainedVariance(_MomentsMetric):
    """Explained variance, sklearn ``explained_variance_score`` (force_finite)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        """Explained variance of everything accumulated."""
        return F.explained_variance_from_moments(self.moments, self.multioutput)


class PearsonCorrCoef(_MomentsMetric):
    """Pearson's correlation coefficient (per output when num_outputs > 1)."""

    higher_is_better = True

    def __init__(self, num_outputs: int = 1, **kwargs: Any) -> None:
        super().__init__(num_outputs=num_outputs, multioutput="raw_values", **kwargs)

    def compute(self) -> Tensor:
        """r of everything accumulated."""
        return F.pearson_from_moments(self.moments)
