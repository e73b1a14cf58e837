"""Regression and aggregation metrics against scikit-learn / numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from trainer.metrics import (
    CatMetric,
    ExplainedVariance,
    MaxMetric,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanMetric,
    MeanSquaredError,
    MinMetric,
    PearsonCorrCoef,
    R2Score,
    SumMetric,
)
from trainer.metrics import functional as FM


def _close(ours, ref):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), ref, rtol=1e-6, atol=1e-6)


def _data(seed=0, d=None):
    g = torch.Generator().manual_seed(seed)
    shape = (150,) if d is None else (150, d)
    target = torch.randn(shape, generator=g) * 2 + 1
    preds = target + torch.randn(shape, generator=g) * 0.7
    return preds, target


def _run(metric, preds, target):
    for i, (a, b) in enumerate([(0, 31), (31, 100), (100, 150)]):
        (metric if i % 2 else metric.update)(preds[a:b], target[a:b])
    return metric.compute()


@pytest.mark.parametrize(
    "make,ref",
    [
        (lambda: MeanSquaredError(), skm.mean_squared_error),
        (lambda: MeanSquaredError(squared=False), skm.root_mean_squared_error),
        (lambda: MeanAbsoluteError(), skm.mean_absolute_error),
        (lambda: MeanAbsolutePercentageError(), skm.mean_absolute_percentage_error),
        (lambda: R2Score(), skm.r2_score),
        (lambda: ExplainedVariance(), skm.explained_variance_score),
        (lambda: PearsonCorrCoef(), lambda t, p: np.corrcoef(t, p)[0, 1]),
    ],
)
def test_regression_matches_sklearn(make, ref):
    preds, target = _data(1)
    _close(_run(make(), preds, target), ref(target.numpy(), preds.numpy()))


@pytest.mark.parametrize("multioutput", ["uniform_average", "raw_values", "variance_weighted"])
@pytest.mark.parametrize("cls,ref", [(R2Score, skm.r2_score),
                                     (ExplainedVariance, skm.explained_variance_score)])
def test_multioutput(cls, ref, multioutput):
    preds, target = _data(2, d=3)
    target = target * torch.tensor([1.0, 3.0, 0.5])
    ours = _run(cls(num_outputs=3, multioutput=multioutput), preds, target)
    _close(ours, ref(target.numpy(), preds.numpy(), multioutput=multioutput))


def test_pearson_multi_and_functional():
    preds, target = _data(3, d=2)
    ours = _run(PearsonCorrCoef(num_outputs=2), preds, target)
    _close(ours, [np.corrcoef(target[:, j], preds[:, j])[0, 1] for j in range(2)])
    p, t = _data(4)
    _close(FM.r2_score(p, t), skm.r2_score(t, p))
    _close(FM.mean_squared_error(p, t, squared=False), skm.root_mean_squared_error(t, p))
    _close(FM.explained_variance(p, t), skm.explained_variance_score(t, p))
    _close(FM.mean_absolute_percentage_error(p, t), skm.mean_absolute_percentage_error(t, p))


def test_r2_constant_target_follows_sklearn():
    t = torch.full((10,), 3.0)
    p = torch.linspace(0, 1, 10)
    m = R2Score()
    m.update(p, t)
    with pytest.warns(UserWarning, match="constant"):
        _close(m.compute(), skm.r2_score(t.numpy(), p.numpy()))
    m = R2Score()
    m.update(t.clone(), t)
    with pytest.warns(UserWarning, match="constant"):
        _close(m.compute(), skm.r2_score(t.numpy(), t.numpy()))


def test_regression_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        MeanSquaredError().update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        R2Score(num_outputs=2).update(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="multioutput"):
        R2Score(multioutput="avg")


def test_aggregations():
    vals = torch.tensor([1.0, 4.0, -2.0, 8.0])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    m = MeanMetric()
    m.update(vals[:2], w[:2])
    m(vals[2:], w[2:])
    _close(m.compute(), np.average(vals, weights=w))
    s, mx, mn, cat = SumMetric(), MaxMetric(), MinMetric(), CatMetric()
    for metric in (s, mx, mn, cat):
        metric.update(vals[:3])
        metric(vals[3])
        metric.update(5.0)
    _close(s.compute(), 16.0)
    _close(mx.compute(), 8.0)
    _close(mn.compute(), -2.0)
    _close(cat.compute(), [1.0, 4.0, -2.0, 8.0, 5.0])


def test_nan_strategies():
    v = torch.tensor([1.0, float("nan"), 3.0])
    with pytest.raises(ValueError, match="NaN"):
        MeanMetric(nan_strategy="error").update(v)
    m = MeanMetric(nan_strategy="warn")
    with pytest.warns(UserWarning, match="NaN"):
        m.update(v)
    _close(m.compute(), 2.0)
    m = SumMetric(nan_strategy="ignore")
    m.update(v)
    _close(m.compute(), 4.0)
    m = SumMetric(nan_strategy=10.0)
    m.update(v)
    _close(m.compute(), 14.0)
    with pytest.raises(ValueError, match="nan_strategy"):
        MeanMetric(nan_strategy="drop")
