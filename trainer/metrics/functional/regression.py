"""Regression metrics as functions, and the sufficient statistics the classes accumulate.

All statistics are sums (synced with one 'sum' all_reduce); R², explained variance and
Pearson's r accumulate in float64 so that the moment formulas keep 1e-6 agreement with
scikit-learn / numpy. ``multioutput`` follows sklearn: 'uniform_average' | 'raw_values' |
'variance_weighted'. A constant target gives sklearn's values (R² = 1.0 for a perfect fit,
0.0 otherwise, plus a warning).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = [
    "explained_variance",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_error",
    "pearson_corrcoef",
    "r2_score",
]

_MULTIOUTPUT = ("uniform_average", "raw_values", "variance_weighted")
_EPS = torch.finfo(torch.float64).eps


def check_regression_inputs(name: str, preds: Tensor, target: Tensor) -> None:
    """Same shapes, float (or int) values."""
    if preds.shape != target.shape:
        raise ValueError(
            f"{name}: preds and target must have the same shape (got preds "
            f"{tuple(preds.shape)} and target {tuple(target.shape)})"
        )
    if preds.is_complex() or target.is_complex() or preds.dtype == torch.bool:
        raise ValueError(f"{name}: preds and target must be real numbers (got {preds.dtype})")


def check_multioutput(name: str, multioutput: str) -> None:
    """multioutput in sklearn's three choices."""
    if multioutput not in _MULTIOUTPUT:
        raise ValueError(f"{name}.multioutput: must be one of {_MULTIOUTPUT} (got {multioutput!r})")


def moments_update(preds: Tensor, target: Tensor) -> Tensor:
    """(7, D) float64: n, Σy, Σy², Σŷ, Σŷ², Σyŷ, Σ(y-ŷ)² per output (D = 1 for 1-d inputs)."""
    p = preds.double().reshape(preds.shape[0], -1) if preds.dim() > 1 else preds.double()[:, None]
    t = target.double().reshape(target.shape[0], -1) if target.dim() > 1 else (
        target.double()[:, None]
    )
    n = torch.full((p.shape[1],), float(p.shape[0]), dtype=torch.float64, device=p.device)
    r = t - p
    return torch.stack(
        [n, t.sum(0), (t * t).sum(0), p.sum(0), (p * p).sum(0), (t * p).sum(0), (r * r).sum(0)]
    )


def _combine(values: Tensor, multioutput: str, weights: Tensor | None) -> Tensor:
    if multioutput == "raw_values" or values.numel() == 1:
        return values.reshape(-1).float() if multioutput == "raw_values" else values.reshape(
            ()).float()
    if multioutput == "variance_weighted" and weights is not None and float(weights.sum()) > 0:
        return ((values * weights).sum() / weights.sum()).float()
    return values.mean().float()


def r2_from_moments(m: Tensor, multioutput: str = "uniform_average") -> Tensor:
    """R² = 1 - SS_res / SS_tot (sklearn r2_score, force_finite=True)."""
    n, sy, syy, sp, spp, syp, srr = m
    ss_tot = syy - sy * sy / n
    ss_res = srr
    r2 = 1 - ss_res / torch.where(ss_tot == 0, torch.ones_like(ss_tot), ss_tot)
    const = ss_tot <= 1e-12 * syy.abs().clamp(min=1)
    if bool(const.any()):
        warnings.warn("R2Score: the target is constant; R² is 1.0 for a perfect fit and 0.0 "
                      "otherwise (sklearn's force_finite)", UserWarning, stacklevel=3)
        r2 = torch.where(const, torch.where(ss_res.abs() <= 1e-12 * syy.abs().clamp(min=1),
                                            torch.ones_like(r2), torch.zeros_like(r2)), r2)
    return _combine(r2, multioutput, ss_tot)


def explained_variance_from_moments(m: Tensor, multioutput: str = "uniform_average") -> Tensor:
    """1 - Var(y - ŷ) / Var(y) (sklearn explained_variance_score, force_finite=True)."""
    n, sy, syy, sp, spp, syp, srr = m
    var_y = syy / n - (sy / n) ** 2
    diff_mean = (sy - sp) / n
    var_d = srr / n - diff_mean**2
    ev = 1 - var_d / torch.where(var_y == 0, torch.ones_like(var_y), var_y)
    const = var_y <= 1e-12 * (syy / n).abs().clamp(min=1)
    if bool(const.any()):
        ev = torch.where(const, torch.where(var_d.abs() <= 1e-12, torch.ones_like(ev),
                                            torch.zeros_like(ev)), ev)
    return _combine(ev, multioutput, var_y)


def pearson_from_moments(m: Tensor) -> Tensor:
    """Pearson's r per output (numpy corrcoef / scipy pearsonr); nan + warning if constant."""
    n, sy, syy, sp, spp, syp, srr = m
    cov = syp - sy * sp / n
    vy = syy - sy * sy / n
    vp = spp - sp * sp / n
    den = (vy * vp).sqrt()
    if bool((den == 0).any()):
        warnings.warn("PearsonCorrCoef: an input is constant; r is undefined (nan)",
                      UserWarning, stacklevel=3)
    r = cov / den
    return (r.reshape(()) if r.numel() == 1 else r).float()


def mean_squared_error(preds: Tensor, target: Tensor, squared: bool = True) -> Tensor:
    """Mean of (ŷ - y)² (RMSE with squared=False)."""
    check_regression_inputs("mean_squared_error", preds, target)
    mse = ((preds.double() - target.double()) ** 2).mean()
    return (mse if squared else mse.sqrt()).float()


def mean_absolute_error(preds: Tensor, target: Tensor) -> Tensor:
    """Mean of |ŷ - y|."""
    check_regression_inputs("mean_absolute_error", preds, target)
    return (preds.double() - target.double()).abs().mean().float()


def mean_absolute_percentage_error(preds: Tensor, target: Tensor) -> Tensor:
    """Mean of |ŷ - y| / max(|y|, eps) (sklearn's eps = float64 machine epsilon)."""
    check_regression_inputs("mean_absolute_percentage_error", preds, target)
    t = target.double()
    return ((preds.double() - t).abs() / t.abs().clamp(min=_EPS)).mean().float()


def r2_score(preds: Tensor, target: Tensor, multioutput: str = "uniform_average") -> Tensor:
    """Coefficient of determination (sklearn r2_score)."""
    check_regression_inputs("r2_score", preds, target)
    check_multioutput("r2_score", multioutput)
    return r2_from_moments(moments_update(preds, target), multioutput)


def explained_variance(
    preds: Tensor, target: Tensor, multioutput: str = "uniform_average"
) -> Tensor:
    """Explained variance (sklearn explained_variance_score)."""
    check_regression_inputs("explained_variance", preds, target)
    check_multioutput("explained_variance", multioutput)
    return explained_variance_from_moments(moments_update(preds, target), multioutput)


def pearson_corrcoef(preds: Tensor, target: Tensor) -> Tensor:
    """Pearson's correlation coefficient (per output for 2-d inputs)."""
    check_regression_inputs("pearson_corrcoef", preds, target)
    return pearson_from_moments(moments_update(preds, target))
