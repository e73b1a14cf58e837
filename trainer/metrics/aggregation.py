"""Aggregations of logged values: mean (weighted), sum, max, min, cat; NaN handling."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from trainer.metrics.metric import Metric

__all__ = ["CatMetric", "MaxMetric", "MeanMetric", "MinMetric", "SumMetric"]


class _Aggregator(Metric):
    def __init__(self, nan_strategy: str | float = "warn", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (nan_strategy in ("error", "warn", "ignore") or isinstance(nan_strategy, float)):
            raise ValueError(
                f"{type(self).__name__}.nan_strategy: must be 'error', 'warn', 'ignore' or a "
                f"float replacement (got {nan_strategy!r})"
            )
        self.nan_strategy = nan_strategy

    def _prepare(self, value: Any, weight: Any = None) -> tuple[Tensor, Tensor | None]:
        """Values (and weights) as float tensors, NaNs handled by the strategy."""
        device = self.device
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=torch.float64, device=device)
        value = value.detach()
        if not value.is_floating_point():
            value = value.double()
        if weight is not None:
            if not isinstance(weight, Tensor):
                weight = torch.as_tensor(weight, dtype=torch.float64, device=value.device)
            weight = weight.detach().double()
            if weight.shape != value.shape:
                try:
                    weight = torch.broadcast_to(weight, value.shape)
                except RuntimeError as err:
                    raise ValueError(
                        f"{type(self).__name__}: weight of shape {tuple(weight.shape)} does not "
                        f"broadcast to value of shape {tuple(value.shape)}"
                    ) from err
        nan = value.isnan()
        if weight is not None:
            nan = nan | weight.isnan()
        if bool(nan.any()):
            if self.nan_strategy == "error":
                raise ValueError(
                    f"{type(self).__name__}: the value contains NaN; pass nan_strategy='ignore' "
                    "or 'warn' to drop NaNs, or a float to replace them"
                )
            if isinstance(self.nan_strategy, float):
                value = value.masked_fill(nan, self.nan_strategy)
                if weight is not None:
                    weight = weight.masked_fill(weight.isnan(), 1.0)
            else:
                if self.nan_strategy == "warn":
                    warnings.warn(f"{type(self).__name__}: NaN values dropped", UserWarning,
                                  stacklevel=3)
                value = value[~nan]
                if weight is not None:
                    weight = weight[~nan]
        return value, weight


class MeanMetric(_Aggregator):
    """Weighted mean: Σ w·v / Σ w (weight defaults to 1, broadcast to the value's shape)."""

    def __init__(self, nan_strategy: str | float = "warn", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.add_state("mean_value", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, value: Any, weight: Any = 1.0) -> None:
        """Accumulate values with their weights."""
        v, w = self._prepare(value, weight)
        self.mean_value = self.mean_value + (v * w).sum()
        self.weight = self.weight + w.sum()

    def compute(self) -> Tensor:
        """The weighted mean (nan when nothing was accumulated)."""
        return (self.mean_value / self.weight).float()


class SumMetric(_Aggregator):
    """Sum of all values."""

    def __init__(self, nan_strategy: str | float = "warn", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.add_state("sum_value", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, value: Any) -> None:
        """Accumulate values."""
        v, _ = self._prepare(value)
        self.sum_value = self.sum_value + v.sum()

    def compute(self) -> Tensor:
        """The sum."""
        return self.sum_value.float()


class MaxMetric(_Aggregator):
    """Maximum of all values (-inf before any)."""

    def __init__(self, nan_strategy: str | float = "warn", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.add_state("max_value", torch.tensor(float("-inf"), dtype=torch.float64), "max")

    def update(self, value: Any) -> None:
        """Accumulate values."""
        v, _ = self._prepare(value)
        if v.numel():
            self.max_value = torch.maximum(self.max_value, v.max())

    def compute(self) -> Tensor:
        """The maximum."""
        return self.max_value.float()


class MinMetric(_Aggregator):
    """Minimum of all values (inf before any)."""

    def __init__(self, nan_strategy: str | float = "warn", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.add_state("min_value", torch.tensor(float("inf"), dtype=torch.float64), "min")

    def update(self, value: Any) -> None:
        """Accumulate values."""
        v, _ = self._prepare(value)
        if v.numel():
            self.min_value = torch.minimum(self.min_value, v.min())

    def compute(self) -> Tensor:
        """The minimum."""
        return self.min_value.float()


class CatMetric(_Aggregator):
    """All values concatenated (flattened), in rank order after a sync."""

    def __init__(self, nan_strategy: str | float = "warn", **kwargs: Any) -> None:
        super().__init__(nan_strategy, **kwargs)
        self.add_state("value", [], "cat")

    def update(self, value: Any) -> None:
        """Accumulate values."""
        v, _ = self._prepare(value)
        self.value.append(v.reshape(-1))

    def compute(self) -> Tensor:
        """All values as one 1-d tensor (empty before any)."""
        if not self.value:
            return torch.zeros(0)
        return torch.cat(self.value) if len(self.value) > 1 else self.value[0]
