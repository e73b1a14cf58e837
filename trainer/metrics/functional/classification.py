"""Classification metrics as functions, and the state updates / reductions the classes use.

Conventions (scikit-learn's, checked in tests/metrics against sklearn 1.9):

- Inputs. binary: ``preds`` probabilities in [0, 1] (thresholded) or 0/1 labels, ``target``
  0/1 integers, same shape. multiclass: ``preds`` class indices of ``target``'s shape, or
  scores ``(N, C, ...)`` (argmax taken); ``target`` integers in ``[0, num_classes)``.
  multilabel: ``preds`` ``(N, L, ...)`` probabilities or 0/1, ``target`` 0/1 of that shape.
  Samples (or label entries) whose target equals ``ignore_index`` are left out.
- Stat scores come from one confusion-matrix state: binary (2, 2), multiclass (C, C) with rows
  the true class, multilabel (L, 2, 2) as ``sklearn.metrics.multilabel_confusion_matrix``.
- Zero division (precision with no predicted positives, recall with no true samples, F with
  neither): the value ``zero_division`` (0.0, 1.0 or nan; 'warn' = 0.0 plus an
  :class:`UndefinedMetricWarning`), as sklearn. nan per-class values are left out of macro /
  weighted averages; a weighted average whose weights are all 0 falls back to the plain mean.
- Accuracy: binary and multiclass micro = ``accuracy_score``; multiclass macro = mean recall
  over the classes present in the target (``balanced_accuracy_score``); multilabel = per-label
  accuracy (micro = ``1 - hamming_loss``); ``top_k`` = ``top_k_accuracy_score``.
- AUROC / average precision: exact from the stored scores (``roc_auc_score`` /
  ``average_precision_score``, multiclass one-vs-rest); a class with only one kind of sample
  gives nan (AUROC) or 0.0 (AP, no positives) plus a warning, as sklearn; macro averages take
  the plain mean (nan propagates), weighted ones weight by support. ``thresholds=`` gives a
  binned curve with fixed memory (exact when the scores lie on the threshold grid).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from operator import add, truediv
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "UndefinedMetricWarning",
    "accuracy",
    "auroc",
    "average_precision",
    "confusion_matrix",
    "f1_score",
    "fbeta_score",
    "precision",
    "recall",
    "specificity",
    "stat_scores",
]

Task = Literal["binary", "multiclass", "multilabel"]
Average = Literal["micro", "macro", "weighted", "none"] | None
Check = Callable[[Tensor, str], None]
_AVERAGES = ("micro", "macro", "weighted", "none", None)


class UndefinedMetricWarning(UserWarning):
    """A metric value is undefined on the data (zero division, one class only)."""


def _eager_check(bad: Tensor, message: str) -> None:
    if bool(bad):
        raise ValueError(message)


# ---------------------------------------------------------------- argument checks
def check_task_args(
    name: str,
    task: str,
    num_classes: int | None,
    num_labels: int | None,
    average: str | None = "micro",
    ignore_index: int | None = None,
    threshold: float = 0.5,
) -> None:
    """Validate the constructor / function arguments shared by the classification metrics."""
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError(
            f"{name}.task: must be 'binary', 'multiclass' or 'multilabel' (got {task!r})"
        )
    if task == "multiclass" and (not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(
            f"{name}.num_classes: task='multiclass' needs an int >= 2 (got {num_classes!r})"
        )
    if task == "multilabel" and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(
            f"{name}.num_labels: task='multilabel' needs an int >= 1 (got {num_labels!r})"
        )
    if average not in _AVERAGES:
        raise ValueError(
            f"{name}.average: must be 'micro', 'macro', 'weighted', 'none' or None "
            f"(got {average!r})"
        )
    if ignore_index is not None and not isinstance(ignore_index, int):
        raise ValueError(f"{name}.ignore_index: must be an int or None (got {ignore_index!r})")
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{name}.threshold: must be a float in [0, 1] (got {threshold!r})")


def check_zero_division(name: str, zero_division: object) -> float:
    """'warn' | 0 | 1 | nan → the value used on zero division."""
    if zero_division == "warn":
        return 0.0
    if isinstance(zero_division, (int, float)) and (
        zero_division in (0, 1) or math.isnan(zero_division)
    ):
        return float(zero_division)
    raise ValueError(
        f"{name}.zero_division: must be 'warn', 0, 1 or nan (got {zero_division!r})"
    )


def _check_int_target(name: str, target: Tensor) -> None:
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"{name}: target must hold integer class labels (got dtype {target.dtype}); "
            "convert with target.long()"
        )


def _check_range(
    name: str, what: str, t: Tensor, high: int, ignore_index: int | None, check: Check
) -> None:
    """Values of t in [0, high) (ignore_index allowed); one cheap reduction."""
    if t.numel() == 0:
        return
    if ignore_index is not None:
        t = t.masked_fill(t == ignore_index, 0)
    lo, hi = torch.aminmax(t)
    if t.is_cpu:
        lo_i, hi_i = int(lo), int(hi)
        if lo_i < 0 or hi_i >= high:
            raise ValueError(_range_check_message(name, what, high, ignore_index, lo_i, hi_i))
    else:
        check((lo < 0) | (hi >= high),
              _range_check_message(name, what, high, ignore_index, "?", "?"))


def _range_check_message(
    name: str, what: str, high: int, ignore_index: int | None, lo: object, hi: object
) -> str:
    ign = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
    return f"{name}: {what} must be in [0, {high - 1}]{ign} (got values in [{lo}, {hi}])"


def _check_probs(name: str, preds: Tensor, check: Check) -> None:
    if preds.numel() == 0:
        return
    lo, hi = torch.aminmax(preds.detach() if preds.requires_grad else preds)
    if preds.is_cpu:
        lo_f, hi_f = float(lo), float(hi)
        if not (lo_f >= 0.0 and hi_f <= 1.0):  # also catches nan
            raise ValueError(_probs_message(name, lo_f, hi_f))
    else:
        check(~((lo >= 0) & (hi <= 1)), _probs_message(name, "?", "?"))


def _probs_message(name: str, lo: object, hi: object) -> str:
    return (
        f"{name}: float preds must be probabilities in [0, 1] (got values in [{lo}, {hi}]); "
        "apply torch.sigmoid (binary, multilabel) or softmax first"
    )


def _check_same_shape(name: str, preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape:
        raise ValueError(
            f"{name}: preds and target must have the same shape (got preds "
            f"{tuple(preds.shape)} and target {tuple(target.shape)})"
        )


def _count(idx: Tensor, n: int) -> Tensor:
    """Counts of the values 0..n-1 in idx (int64), no host sync on accelerators."""
    if idx.is_cpu:
        return torch.bincount(idx, minlength=n)
    out = torch.zeros(n, dtype=torch.int64, device=idx.device)
    return out.index_add_(0, idx, torch.ones_like(idx))


def _range_message(name: str, target: Tensor, high: int, ignore_index: int | None) -> str:
    got = ""
    if target.is_cpu:  # on accelerators: no host sync for the message
        t = target if ignore_index is None else target[target != ignore_index]
        if t.numel():
            got = f" (got values in [{int(t.min())}, {int(t.max())}])"
    ign = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
    return f"{name}: target must be in [0, {high - 1}]{ign}{got}"


def _checked_count(
    idx: Tensor, n: int, validate: bool, check: Check, message: Callable[[], str]
) -> Tensor:
    """Counts of 0..n-1 in idx; a value outside [0, n) means bad input.

    On CPU the check is free (bincount's output length / its error on negatives); on an
    accelerator out-of-range values go to a trash bin and the error is deferred (no sync).
    """
    if idx.is_cpu:
        try:
            out = torch.bincount(idx, minlength=n)
        except RuntimeError as err:
            raise ValueError(message()) from err
        if out.numel() > n:
            if validate:
                raise ValueError(message())
            out = out[:n]
        return out
    safe = idx.clamp(-1, n).remainder_(n + 1)  # out-of-range values → trash bin n
    out = torch.zeros(n + 1, dtype=torch.int64, device=idx.device)
    out.index_add_(0, safe, _ones(safe))
    if validate:
        check(out[n] > 0, message())
    return out[:n]


_ONES: dict[tuple[torch.device, int], Tensor] = {}


def _ones(idx: Tensor) -> Tensor:
    """A cached int64 ones vector of idx's length and device (batch sizes repeat)."""
    key = (idx.device, idx.numel())
    ones = _ONES.get(key)
    if ones is None:
        if len(_ONES) > 32:
            _ONES.clear()
        ones = _ONES[key] = torch.ones(idx.numel(), dtype=torch.int64, device=idx.device)
    return ones


# ---------------------------------------------------------------- confusion-matrix state
def confmat_update(
    preds: Tensor,
    target: Tensor,
    task: Task,
    num_classes: int | None = None,
    num_labels: int | None = None,
    threshold: float = 0.5,
    ignore_index: int | None = None,
    validate_args: bool = True,
    check: Check = _eager_check,
    name: str = "confusion_matrix",
) -> Tensor:
    """The confusion-matrix counts of one batch: (2, 2), (C, C) or (L, 2, 2), int64.

    Target ranges are checked for free by the counting itself (see _checked_count); float
    preds that must be probabilities cost one aminmax.
    """
    if validate_args and (target.is_floating_point() or target.is_complex()):
        _check_int_target(name, target)
    if task == "binary":
        if validate_args:
            _check_same_shape(name, preds, target)
            if preds.is_floating_point():
                _check_probs(name, preds, check)
            else:
                _check_range(name, "integer preds", preds, 2, None, check)
        p = preds >= threshold if preds.is_floating_point() else preds
        t = target.reshape(-1) if target.dim() != 1 else target
        idx = torch.add(p.reshape(-1) if p.dim() != 1 else p, t.long(), alpha=2)
        n = 4
        high = 2
        shape: tuple[int, ...] = (2, 2)
    elif task == "multiclass":
        c = int(num_classes)  # type: ignore[arg-type]
        if preds.dim() == target.dim() + 1:
            if validate_args and (
                preds.shape[1] != c or preds.shape[:1] + preds.shape[2:] != target.shape
            ):
                raise ValueError(
                    f"{name}: multiclass scores must have shape (N, {c}, ...) matching target "
                    f"{tuple(target.shape)} (got preds {tuple(preds.shape)})"
                )
            if not preds.is_floating_point() and validate_args:
                raise ValueError(f"{name}: multiclass scores (N, C) must be float")
            preds = preds.argmax(1)
        elif validate_args:
            _check_same_shape(name, preds, target)
            if preds.is_floating_point():
                raise ValueError(
                    f"{name}: multiclass preds of target's shape must be integer class indices "
                    f"(got dtype {preds.dtype}); pass scores of shape (N, {c}) or preds.long()"
                )
            _check_range(name, "preds", preds, c, None, check)
        t = target.reshape(-1) if target.dim() != 1 else target
        idx = torch.add(preds.reshape(-1) if preds.dim() != 1 else preds, t.long(), alpha=c)
        n = c * c
        high = c
        shape = (c, c)
    else:
        n_l = int(num_labels)  # type: ignore[arg-type]
        if validate_args:
            _check_same_shape(name, preds, target)
            if preds.dim() < 2 or preds.shape[1] != n_l:
                raise ValueError(
                    f"{name}: multilabel preds and target must have shape (N, {n_l}, ...) "
                    f"(got {tuple(preds.shape)})"
                )
            if preds.is_floating_point():
                _check_probs(name, preds, check)
            else:
                _check_range(name, "integer preds", preds, 2, None, check)
        p = preds >= threshold if preds.is_floating_point() else preds
        if preds.dim() > 2:  # (N, L, ...) → (N*..., L)
            p = p.movedim(1, -1).reshape(-1, n_l)
            target = target.movedim(1, -1).reshape(-1, n_l)
        # layout (target, label, pred) so that a target >= 2 falls outside the counted range
        lab = torch.arange(0, 2 * n_l, 2, device=target.device)
        t = target
        idx = (target.long() * (2 * n_l) + lab + p).reshape(-1)
        t = target.reshape(-1)
        n = 4 * n_l
        high = 2
        shape = (2, n_l, 2)
    n_bins = n
    if ignore_index is not None:
        idx = idx.masked_fill(t == ignore_index, n)
        n_bins = n + 1
    counts = _checked_count(
        idx, n_bins, validate_args, check,
        lambda: _range_message(name, target, high, ignore_index),
    )
    if n_bins != n:
        counts = counts[:n]
    counts = counts.view(shape)
    return counts.permute(1, 0, 2) if task == "multilabel" else counts


def topk_update(
    preds: Tensor,
    target: Tensor,
    num_classes: int,
    top_k: int,
    ignore_index: int | None = None,
    validate_args: bool = True,
    check: Check = _eager_check,
    name: str = "accuracy",
) -> Tensor:
    """(2, C) int64: per class, the samples whose class is among the top_k scores; support."""
    c = num_classes
    if validate_args:
        if preds.dim() != target.dim() + 1 or preds.shape[1] != c or not preds.is_floating_point():
            raise ValueError(
                f"{name}: top_k > 1 needs float scores of shape (N, {c}, ...) (got preds "
                f"{tuple(preds.shape)} {preds.dtype}, target {tuple(target.shape)})"
            )
        if top_k > c:
            raise ValueError(f"{name}.top_k: must be <= num_classes={c} (got {top_k})")
        _check_int_target(name, target)
        _check_range(name, "target", target, c, ignore_index, check)
    if preds.dim() > 2:
        preds = preds.movedim(1, -1).reshape(-1, c)
    t = target.reshape(-1).long()
    if ignore_index is not None:
        ignored = t == ignore_index
        t = t.masked_fill(ignored, c)
    top = preds.topk(top_k, dim=1).indices
    hit = (top == t.unsqueeze(1)).any(1)
    tp = _count(t.masked_fill(~hit, c), c + 1)[:c]
    support = _count(t, c + 1)[:c]
    return torch.stack([tp, support])


def stat_scores(confmat: Tensor, task: Task) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """tp, fp, tn, fn from a confusion-matrix state (scalars for binary, per class otherwise)."""
    cm = confmat
    if task == "binary":
        return cm[1, 1], cm[0, 1], cm[0, 0], cm[1, 0]
    if task == "multilabel":
        return cm[:, 1, 1], cm[:, 0, 1], cm[:, 0, 0], cm[:, 1, 0]
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, tn, fn


def _sums(
    cm: Tensor, task: Task, need_total: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """tp, predicted positives (tp+fp), true positives (tp+fn), total — per class/label."""
    if task == "binary":
        return cm[1, 1], cm[:, 1].sum(), cm[1].sum(), cm.sum() if need_total else None
    if task == "multilabel":
        return (cm[:, 1, 1], cm[:, :, 1].sum(1), cm[:, 1].sum(1),
                cm.sum((1, 2)) if need_total else None)
    return cm.diagonal(), cm.sum(0), cm.sum(1), cm.sum() if need_total else None


def _warn_zero(what: str, n_zero: int, n: int) -> None:
    warnings.warn(
        f"{what} is ill-defined (0/0) for {n_zero} of {n} classes/labels and set to 0.0; "
        "pass zero_division=0|1|nan to choose the value and silence this warning",
        UndefinedMetricWarning,
        stacklevel=5,
    )


def _divide(
    num: Tensor, den: Tensor, zero_division: object, what: str, warn: bool = True
) -> Tensor:
    """num / den (float32); where den == 0 the zero_division value (+ warning for 'warn').

    One reduction and one host read when nothing is zero. Scalars on CPU divide on the host
    (two reads and one small tensor: cheaper than a promoting tensor division).
    """
    if den.dim() == 0 and num.dim() == 0 and den.is_cpu:
        d = den.item()
        if d != 0:
            f64 = num.dtype == torch.float64 or den.dtype == torch.float64
            return torch.scalar_tensor(num.item() / d,
                                       dtype=torch.float64 if f64 else torch.float32)
    out = torch.true_divide(num, den)
    if out.dtype != torch.float32 and out.dtype != torch.float64:
        out = out.float()
    if den.numel() == 1:
        if float(den) != 0.0:
            return out
        zero = den == 0
    else:
        if float(den.min()) > 0.0:
            return out
        zero = den == 0
    value = check_zero_division(what, zero_division)
    out = out.masked_fill(zero, value)
    if zero_division == "warn" and warn:
        _warn_zero(what, int(zero.sum()), zero.numel())
    return out


def _average(
    scores: Tensor, average: str | None, weights: Tensor | None, may_nan: bool = True
) -> Tensor:
    """Average per-class scores the sklearn way (nan left out; zero weights → plain mean).

    ``may_nan=False`` (no zero_division=nan) skips the nan scan.
    """
    if average in ("none", None):
        return scores.float()
    nan = scores.isnan() if may_nan else None
    if nan is not None and bool(nan.any()):
        keep = ~nan
        if not bool(keep.any()):
            return torch.tensor(float("nan"))
        scores = scores[keep]
        weights = weights[keep] if weights is not None else None
    if average == "weighted" and weights is not None:
        total = weights.sum()
        if float(total) != 0.0:
            return ((scores * weights).sum() / total).float()
    return scores.mean().float()


# Small confusion matrices on the CPU reduce on the host: one copy (tolist) and plain Python
# arithmetic in float64 cost less than the ~10 tensor ops (each a few µs of dispatch) of the
# tensor path. Same conventions; the value is rounded to float32 once at the end.
_HOST_MAX = 1024


def _host_rows(cm: Tensor, task: Task) -> list | None:
    """cm as nested lists where the host path applies (CPU, binary/multiclass, small)."""
    if task == "multilabel" or not cm.is_cpu or cm.numel() > _HOST_MAX or cm.dim() != 2:
        return None
    return cm.tolist()


def _host_divide(
    num: list, den: list, zero_division: object, what: str, warn: bool = True
) -> list[float]:
    """num / den per entry; where den == 0 the zero_division value (+ warning for 'warn')."""
    if all(den):
        return list(map(truediv, num, den))
    out = [n / d if d else math.nan for n, d in zip(num, den)]
    n_zero = sum(1 for d in den if not d)
    value = check_zero_division(what, zero_division)
    out = [v if d else value for v, d in zip(out, den)]
    if zero_division == "warn" and warn:
        _warn_zero(what, n_zero, len(den))
    return out


def _host_average(
    scores: list[float], average: str | None, weights: list | None, may_nan: bool = True
) -> Tensor:
    """_average on host lists."""
    if average in ("none", None):
        return torch.tensor(scores, dtype=torch.float32)
    if may_nan and any(math.isnan(v) for v in scores):
        keep = [i for i, v in enumerate(scores) if not math.isnan(v)]
        if not keep:
            return torch.scalar_tensor(math.nan)
        scores = [scores[i] for i in keep]
        weights = [weights[i] for i in keep] if weights is not None else None
    if average == "weighted" and weights is not None:
        total = sum(weights)
        if total != 0:
            return torch.scalar_tensor(sum(v * w for v, w in zip(scores, weights)) / total)
    return torch.scalar_tensor(sum(scores) / len(scores))


def _host_sums(rows: list, task: Task) -> tuple[list, list, list, int]:
    """tp, predicted positives, true positives per class (binary: the positive class), total."""
    if task == "binary":
        (tn, fp), (fn, tp) = rows
        return [tp], [tp + fp], [tp + fn], tn + fp + fn + tp
    true = list(map(sum, rows))
    tp = list(map(list.__getitem__, rows, range(len(rows))))
    return tp, list(map(sum, zip(*rows))), true, sum(true)


def _host_prf(
    rows: list, task: Task, kind: str, average: str | None, beta: float, zero_division: object
) -> Tensor:
    tp, pred, true, total = _host_sums(rows, task)
    micro = task == "binary" or average == "micro"
    if kind == "fbeta" and math.isinf(beta):
        kind = "recall"
    elif kind == "fbeta" and beta == 0:
        kind = "precision"
    b2 = beta * beta
    f64 = False
    if kind == "precision":
        num, den, what = tp, pred, "Precision"
    elif kind == "recall":
        num, den, what = tp, true, "Recall"
    elif kind == "specificity":
        num = [total - p - t + x for x, p, t in zip(tp, pred, true)]
        den, what = [total - t for t in true], "Specificity"
    elif b2 == 1.0:
        num, den, what = [x + x for x in tp], list(map(add, pred, true)), "F-score"
    else:
        num = [x * (1 + b2) for x in tp]
        den = [p + t * b2 for p, t in zip(pred, true)]
        what, f64 = "F-score", True
    if micro:
        num, den = [sum(num)], [sum(den)]
        value = _host_divide(num, den, zero_division, what)[0]
        return torch.scalar_tensor(value, dtype=torch.float64 if f64 else torch.float32)
    scores = _host_divide(num, den, zero_division, what)
    return _host_average(scores, average, true, may_nan=_is_nan(zero_division))


def _host_accuracy(rows: list, task: Task, average: str | None, zero_division: object) -> Tensor:
    if task == "binary" or average in ("micro", "weighted"):
        total = sum(map(sum, rows))
        correct = sum(map(list.__getitem__, rows, range(len(rows))))
        if total:
            return torch.scalar_tensor(correct / total)
        return torch.scalar_tensor(_host_divide([correct], [total], zero_division,
                                                "Accuracy")[0])
    tp, pred, support, total = _host_sums(rows, task)
    if average == "macro":
        present = [i for i, s in enumerate(support) if s > 0]
        if len(present) == len(support):
            return torch.scalar_tensor(sum(x / s for x, s in zip(tp, support)) / len(tp))
        if not present:
            return torch.scalar_tensor(_host_divide([sum(tp)], [total], zero_division,
                                                    "Accuracy")[0])
        if any(pred[i] > 0 for i, s in enumerate(support) if s == 0):
            warnings.warn(
                "Accuracy(average='macro'): preds contain classes absent from the target; "
                "those classes are left out of the mean recall (balanced_accuracy_score)",
                UndefinedMetricWarning,
                stacklevel=3,
            )
        return torch.scalar_tensor(sum(tp[i] / support[i] for i in present) / len(present))
    return torch.tensor(_host_divide(tp, support, zero_division, "Recall"), dtype=torch.float32)


def reduce_prf(
    confmat: Tensor,
    task: Task,
    kind: Literal["precision", "recall", "fbeta", "specificity"],
    average: str | None,
    beta: float = 1.0,
    zero_division: object = "warn",
) -> Tensor:
    """Precision / recall / F-beta / specificity from a confusion-matrix state."""
    rows = _host_rows(confmat, task)
    if rows is not None:
        return _host_prf(rows, task, kind, average, beta, zero_division)
    tp, pred, true, total = _sums(confmat, task, need_total=kind == "specificity")
    micro = task == "binary" or average == "micro"
    if kind == "fbeta" and math.isinf(beta):
        kind = "recall"
    elif kind == "fbeta" and beta == 0:
        kind = "precision"
    if kind == "precision":
        num, den, what = tp, pred, "Precision"
    elif kind == "recall":
        num, den, what = tp, true, "Recall"
    elif kind == "specificity":
        assert total is not None
        num = total - pred - true + tp  # tn
        den, what = total - true, "Specificity"  # tn + fp
    else:
        b2 = beta * beta
        num = tp * (1 + b2) if b2 != 1.0 else tp * 2
        den = pred + true if b2 == 1.0 else pred.double() + true * b2
        what = "F-score"
    if micro:
        if num.dim():
            num, den = num.sum(), den.sum()
        return _divide(num, den, zero_division, what)
    scores = _divide(num, den, zero_division, what)
    return _average(scores, average, true, may_nan=_is_nan(zero_division))


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def reduce_accuracy(
    state: Tensor, task: Task, average: str | None, top_k: int = 1, zero_division: object = "warn"
) -> Tensor:
    """Accuracy from a confusion-matrix state (or a top-k state (2, C))."""
    rows = _host_rows(state, task) if top_k == 1 else None
    if rows is not None:
        return _host_accuracy(rows, task, average, zero_division)
    if top_k > 1:
        tp, support = state[0], state[1]
    elif task == "binary":
        return _divide(state.trace(), state.sum(), zero_division, "Accuracy")
    elif task == "multilabel":
        tp, pred, true, total = _sums(state, task)
        assert total is not None
        correct = total - pred - true + 2 * tp  # tp + tn
        if average == "micro":
            return _divide(correct.sum(), total.sum(), zero_division, "Accuracy")
        return _average(_divide(correct, total, zero_division, "Accuracy"), average, true)
    else:
        if average in ("micro", "weighted"):
            return _divide(state.trace(), state.sum(), zero_division, "Accuracy")
        tp, support = state.diagonal(), state.sum(1)
    if average in ("micro", "weighted"):
        return _divide(tp.sum(), support.sum(), zero_division, "Accuracy")
    if average == "macro":  # balanced accuracy: classes absent from the target are left out
        if float(support.min()) > 0:
            return torch.true_divide(tp, support).mean()
        present = support > 0
        if not bool(present.any()):
            return _divide(tp.sum(), support.sum(), zero_division, "Accuracy")
        if top_k == 1 and task == "multiclass" and bool((state.sum(0)[~present] > 0).any()):
            warnings.warn(
                "Accuracy(average='macro'): preds contain classes absent from the target; "
                "those classes are left out of the mean recall (balanced_accuracy_score)",
                UndefinedMetricWarning,
                stacklevel=3,
            )
        return torch.true_divide(tp[present], support[present]).mean()
    return _divide(tp, support, zero_division, "Recall")  # 'none': per-class recall


def normalize_confmat(confmat: Tensor, normalize: str | None) -> Tensor:
    """sklearn's normalize='true'|'pred'|'all'|None (0/0 → 0)."""
    if normalize is None:
        return confmat
    cm = confmat.double()
    if normalize == "true":
        out = cm / cm.sum(-1, keepdim=True)
    elif normalize == "pred":
        out = cm / cm.sum(-2, keepdim=True)
    elif normalize == "all":
        out = cm / cm.sum((-2, -1), keepdim=True)
    else:
        raise ValueError(
            f"ConfusionMatrix.normalize: must be 'true', 'pred', 'all' or None (got {normalize!r})"
        )
    return torch.nan_to_num(out, nan=0.0).float()


# ---------------------------------------------------------------- curves
def format_curve_inputs(
    preds: Tensor,
    target: Tensor,
    task: Task,
    num_classes: int | None,
    num_labels: int | None,
    validate_args: bool,
    check: Check,
    name: str,
    need_probs: bool = False,
) -> tuple[Tensor, Tensor]:
    """Validate and reshape scores/targets: binary (M,), multiclass (M, C) + (M,), multilabel
    (M, L) + (M, L)."""
    if task == "binary":
        if validate_args:
            _check_same_shape(name, preds, target)
            _check_int_target(name, target)
        return preds.reshape(-1), target.reshape(-1)
    if task == "multiclass":
        c = int(num_classes)  # type: ignore[arg-type]
        if validate_args:
            if preds.dim() != target.dim() + 1 or preds.shape[1] != c:
                raise ValueError(
                    f"{name}: multiclass scores must have shape (N, {c}, ...) with target "
                    f"(N, ...) (got preds {tuple(preds.shape)}, target {tuple(target.shape)})"
                )
            _check_int_target(name, target)
        if preds.dim() > 2:
            preds = preds.movedim(1, -1).reshape(-1, c)
        return preds, target.reshape(-1)
    n_l = int(num_labels)  # type: ignore[arg-type]
    if validate_args:
        _check_same_shape(name, preds, target)
        if preds.dim() < 2 or preds.shape[1] != n_l:
            raise ValueError(
                f"{name}: multilabel preds and target must have shape (N, {n_l}, ...) "
                f"(got {tuple(preds.shape)})"
            )
        _check_int_target(name, target)
    if preds.dim() > 2:
        preds = preds.movedim(1, -1).reshape(-1, n_l)
        target = target.movedim(1, -1).reshape(-1, n_l)
    return preds, target


def validate_curve_values(
    preds: Tensor,
    target: Tensor,
    task: Task,
    num_classes: int | None,
    ignore_index: int | None,
    check: Check,
    name: str,
    need_probs: bool,
) -> None:
    """Value checks of formatted curve inputs: target labels; probabilities when binned."""
    high = int(num_classes) if task == "multiclass" else 2  # type: ignore[arg-type]
    _check_range(name, "target", target, high, ignore_index, check)
    if not preds.is_floating_point():
        raise ValueError(f"{name}: preds must be float scores (got dtype {preds.dtype})")
    if need_probs:
        _check_probs(name, preds, check)


def _binary_clf_curve(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """fps, tps at each distinct score, scores descending (sklearn's _binary_clf_curve)."""
    p, order = torch.sort(preds, descending=True)  # order inside ties does not matter
    t = target[order]
    # the last position of each run of equal scores: its cumulative counts are a curve point
    _, counts = torch.unique_consecutive(p, return_counts=True)
    idx = torch.cumsum(counts, 0) - 1
    tps = torch.cumsum(t, 0, dtype=torch.float64)[idx]
    fps = (idx + 1) - tps
    return fps, tps


def _auc_from_counts(fps: Tensor, tps: Tensor, warn: bool) -> Tensor:
    """Trapezoid area under (fps/N, tps/P); nan + warning where one class is missing."""
    if tps.numel() == 0 or float(tps[-1]) == 0 or float(fps[-1]) == 0:
        if warn:
            warnings.warn(
                "Only one class is present in y_true. ROC AUC score is not defined in that "
                "case (nan)",
                UndefinedMetricWarning,
                stacklevel=4,
            )
        return torch.tensor(float("nan"), dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64, device=fps.device)
    fpr = torch.cat([zero, fps]) / fps[-1]
    tpr = torch.cat([zero, tps]) / tps[-1]
    return torch.trapezoid(tpr, fpr)


def _ap_from_counts(fps: Tensor, tps: Tensor, warn: bool) -> Tensor:
    """Step-wise average precision (sklearn): sum over thresholds of ΔR · P."""
    if tps.numel() == 0 or float(tps[-1]) == 0:
        if warn:
            warnings.warn(
                "No positive class found in y_true: average precision is 0.0",
                UndefinedMetricWarning,
                stacklevel=4,
            )
        return torch.tensor(0.0, dtype=torch.float64)
    predicted = tps + fps
    precision = torch.where(predicted > 0, tps / predicted.clamp(min=1), torch.ones_like(tps))
    recall = tps / tps[-1]
    prev = torch.cat([torch.zeros(1, dtype=torch.float64, device=tps.device), recall[:-1]])
    return ((recall - prev) * precision).sum()


def _rank_auroc(
    preds: Tensor, target: Tensor, warn: bool, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Binary AUROC as the Mann-Whitney statistic (ties count 1/2, as the trapezoid of sklearn's
    ROC curve), in exact integers: with s the sorted scores and lo/hi the left/right insertion
    points of each positive score in s, Σ(lo + hi) = 2·Σ(average 1-based rank) - P, so
    AUROC = (Σ(lo + hi) - P²) / (2·P·N). One sort, two searchsorted, one sum.
    """
    s = preds.sort().values
    pos = preds[target == 1]
    p = pos.numel()
    n = preds.numel() - p
    if p == 0 or n == 0:
        return _auc_from_counts(torch.zeros(0, dtype=torch.float64), torch.zeros(0), warn)
    ranks = torch.searchsorted(s, pos).add_(torch.searchsorted(s, pos, right=True))
    return torch.scalar_tensor((ranks.sum().item() - p * p) / (2 * p * n), dtype=dtype)


def _binary_curve_score(
    preds: Tensor, target: Tensor, kind: str, warn: bool = True,
    rank_dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The binary score, float64 (the rank path: rank_dtype, made once on the host)."""
    if kind == "auroc" and preds.is_cpu and not preds.dtype.is_complex:
        return _rank_auroc(preds, target, warn, rank_dtype)
    if preds.numel() == 0:
        fps = tps = torch.zeros(0, dtype=torch.float64)
    else:
        fps, tps = _binary_clf_curve(preds, target)
    return _auc_from_counts(fps, tps, warn) if kind == "auroc" else _ap_from_counts(fps, tps, warn)


def _average_curve_scores(scores: Tensor, average: str | None, support: Tensor) -> Tensor:
    """sklearn's _average_binary_score: plain mean (nan propagates) or support-weighted."""
    if average in ("none", None):
        return scores.float()
    if average == "weighted":
        w = support.double()
        if float(w.sum()) == 0.0:
            return torch.tensor(0.0)
        scores = scores.masked_fill(w == 0, 0.0)
        return ((scores * w).sum() / w.sum()).float()
    return scores.mean().float()


def curve_score_exact(
    preds: Tensor,
    target: Tensor,
    task: Task,
    kind: Literal["auroc", "ap"],
    average: str | None,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """AUROC or AP from all scores (formatted by format_curve_inputs)."""
    if task == "binary":
        if ignore_index is not None:
            keep = target != ignore_index
            preds, target = preds[keep], target[keep]
        return _binary_curve_score(preds, target, kind, rank_dtype=torch.float32).float()
    if task == "multiclass":
        c = int(num_classes)  # type: ignore[arg-type]
        if ignore_index is not None:
            keep = target != ignore_index
            preds, target = preds[keep], target[keep]
        onehot = torch.nn.functional.one_hot(target.long(), c)
    else:
        onehot = target
        if ignore_index is not None and average == "micro":
            keep = onehot != ignore_index
            return _binary_curve_score(preds[keep], onehot[keep], kind).float()
    if average == "micro":
        return _binary_curve_score(preds.reshape(-1), onehot.reshape(-1), kind).float()
    scores = []
    supports = []
    for j in range(onehot.shape[1]):
        p, t = preds[:, j], onehot[:, j]
        if ignore_index is not None and task == "multilabel":
            keep = t != ignore_index
            p, t = p[keep], t[keep]
        scores.append(_binary_curve_score(p, t, kind))
        supports.append((t == 1).sum())
    return _average_curve_scores(torch.stack(scores), average, torch.stack(supports))


def make_thresholds(thresholds: int | Sequence[float] | Tensor, name: str) -> Tensor:
    """thresholds=int n → linspace(0, 1, n); a sequence/tensor → sorted float32 tensor."""
    if isinstance(thresholds, int):
        if thresholds < 2:
            raise ValueError(f"{name}.thresholds: an int must be >= 2 (got {thresholds})")
        return torch.linspace(0, 1, thresholds)
    t = torch.as_tensor(thresholds, dtype=torch.float32).reshape(-1)
    if t.numel() < 2 or not bool((t[1:] > t[:-1]).all()):
        raise ValueError(
            f"{name}.thresholds: must be increasing with >= 2 values (got {thresholds!r})"
        )
    return t


def binned_update(
    preds: Tensor, target: Tensor, thresholds: Tensor, task: Task, num_classes: int | None,
    ignore_index: int | None,
) -> Tensor:
    """Histogram (K, T+1, 2) of (bin, target) counts; bin = how many thresholds are <= pred."""
    n_t = thresholds.numel()
    if task == "binary":
        preds, target = preds.reshape(-1, 1), target.reshape(-1, 1)
    elif task == "multiclass":
        c = int(num_classes)  # type: ignore[arg-type]
        t = target.long()
        ignored = t == ignore_index if ignore_index is not None else None
        target = torch.nn.functional.one_hot(t.clamp(0, c - 1), c)
        if ignored is not None:
            target = target.masked_fill(ignored.unsqueeze(1), -1)
        ignore_index = -1 if ignored is not None else None
    k = preds.shape[1]
    bins = torch.searchsorted(thresholds, preds.contiguous(), right=True)
    idx = (torch.arange(k, device=preds.device) * (n_t + 1) + bins) * 2 + target.long()
    size = k * (n_t + 1) * 2
    n = size
    if ignore_index is not None:
        idx = idx.masked_fill(target == ignore_index, size)
        n = size + 1
    # the target range was checked before; this only keeps bad input off the device's
    # out-of-range asserts
    counts = _checked_count(idx.reshape(-1), n, False, _eager_check, lambda: "")
    return counts[:size].view(k, n_t + 1, 2)


def _binned_binary_auroc(hist: Tensor) -> Tensor:
    """Binary AUROC from a (T+1, 2) histogram on the CPU in few ops, in exact integers.

    Thresholds descending, bin 0 (below the first threshold) never positive, as in
    curve_score_binned. With neg/pos the counts of bins 1..T (ascending) and cneg/cpos their
    running sums, twice the trapezoid from (0, 0) over (fps, tps) is
    2·N·P - 2·Σ neg·cpos + Σ neg·pos, and Σ neg·pos = Σ neg·cpos + Σ pos·cneg - N·P, so it is
    N·P - Σ neg·cpos + Σ pos·cneg: one cumsum, one (2, T) @ (T, 2) product, two host reads.
    Divided by 2·P·N it is the area under the normalised curve of _auc_from_counts.
    """
    h = hist.narrow(0, 1, hist.shape[0] - 1)  # bins 1..T, ascending
    c = h.cumsum(0)
    ((n, p),) = c.narrow(0, c.shape[0] - 1, 1).tolist()
    if p == 0 or n == 0:
        warnings.warn(
            "Only one class is present in y_true. ROC AUC score is not defined in that "
            "case (nan)",
            UndefinedMetricWarning,
            stacklevel=4,
        )
        return torch.scalar_tensor(math.nan)
    (_, neg_cpos), (pos_cneg, _) = h.t().mm(c).tolist()
    return torch.scalar_tensor((n * p - neg_cpos + pos_cneg) / (2 * p * n))


def curve_score_binned(
    hist: Tensor, task: Task, kind: Literal["auroc", "ap"], average: str | None
) -> Tensor:
    """AUROC or AP from a binned histogram (K, T+1, 2)."""
    if task == "binary" and kind == "auroc" and hist.is_cpu:
        return _binned_binary_auroc(hist.select(0, 0))
    # tps at threshold i (descending) = positives in bins >= i+1
    rev = hist.flip(1).cumsum(1).double()  # rev[:, j] = counts in bins >= T - j
    tps_all, fps_all = rev[:, :-1, 1], rev[:, :-1, 0]  # thresholds T-1 .. 0
    if average == "micro" and task != "binary":
        tps_all, fps_all = tps_all.sum(0, keepdim=True), fps_all.sum(0, keepdim=True)
    scores = []
    for j in range(tps_all.shape[0]):
        fps, tps = fps_all[j], tps_all[j]
        if kind == "auroc":
            scores.append(_auc_from_counts(fps, tps, True))
        else:
            scores.append(_ap_from_counts(fps, tps, True))
    s = torch.stack(scores)
    if task == "binary" or (average == "micro"):
        return s[0].float()
    return _average_curve_scores(s, average, hist[:, :, 1].sum(1))


# ---------------------------------------------------------------- functional API
def _prf(
    kind: str, preds: Tensor, target: Tensor, task: Task, num_classes: int | None,
    num_labels: int | None, threshold: float, average: str | None, ignore_index: int | None,
    beta: float, zero_division: object, validate_args: bool,
) -> Tensor:
    check_task_args(kind, task, num_classes, num_labels, average, ignore_index, threshold)
    cm = confmat_update(preds, target, task, num_classes, num_labels, threshold, ignore_index,
                        validate_args, name=kind)
    return reduce_prf(cm, task, kind, average, beta, zero_division)  # type: ignore[arg-type]


def precision(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, average: Average = "micro",
    ignore_index: int | None = None, zero_division: object = "warn", validate_args: bool = True,
) -> Tensor:
    """Precision tp / (tp + fp) (sklearn precision_score)."""
    return _prf("precision", preds, target, task, num_classes, num_labels, threshold, average,
                ignore_index, 1.0, zero_division, validate_args)


def recall(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, average: Average = "micro",
    ignore_index: int | None = None, zero_division: object = "warn", validate_args: bool = True,
) -> Tensor:
    """Recall tp / (tp + fn) (sklearn recall_score)."""
    return _prf("recall", preds, target, task, num_classes, num_labels, threshold, average,
                ignore_index, 1.0, zero_division, validate_args)


def specificity(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, average: Average = "micro",
    ignore_index: int | None = None, zero_division: object = "warn", validate_args: bool = True,
) -> Tensor:
    """Specificity tn / (tn + fp) (the recall of the negative class)."""
    return _prf("specificity", preds, target, task, num_classes, num_labels, threshold, average,
                ignore_index, 1.0, zero_division, validate_args)


def fbeta_score(
    preds: Tensor, target: Tensor, task: Task, beta: float = 1.0, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, average: Average = "micro",
    ignore_index: int | None = None, zero_division: object = "warn", validate_args: bool = True,
) -> Tensor:
    """F-beta (1+b²)tp / ((1+b²)tp + b²fn + fp) (sklearn fbeta_score)."""
    if not beta >= 0:
        raise ValueError(f"fbeta_score.beta: must be >= 0 (got {beta})")
    return _prf("fbeta", preds, target, task, num_classes, num_labels, threshold, average,
                ignore_index, beta, zero_division, validate_args)


def f1_score(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, average: Average = "micro",
    ignore_index: int | None = None, zero_division: object = "warn", validate_args: bool = True,
) -> Tensor:
    """F1 (sklearn f1_score)."""
    return fbeta_score(preds, target, task, 1.0, num_classes, num_labels, threshold, average,
                       ignore_index, zero_division, validate_args)


def accuracy(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, average: Average = "micro",
    top_k: int = 1, ignore_index: int | None = None, zero_division: object = "warn",
    validate_args: bool = True,
) -> Tensor:
    """Accuracy (see the module docstring for the conventions per task and average)."""
    check_task_args("accuracy", task, num_classes, num_labels, average, ignore_index, threshold)
    if top_k > 1:
        if task != "multiclass":
            raise ValueError(
                f"accuracy.top_k: only task='multiclass' supports top_k > 1 (got {task!r})"
            )
        st = topk_update(preds, target, int(num_classes), top_k, ignore_index,  # type: ignore[arg-type]
                         validate_args)
        return reduce_accuracy(st, task, average, top_k, zero_division)
    cm = confmat_update(preds, target, task, num_classes, num_labels, threshold, ignore_index,
                        validate_args, name="accuracy")
    return reduce_accuracy(cm, task, average, 1, zero_division)


def confusion_matrix(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, threshold: float = 0.5, normalize: str | None = None,
    ignore_index: int | None = None, validate_args: bool = True,
) -> Tensor:
    """Confusion matrix: (2, 2), (C, C) rows = true class, or (L, 2, 2); sklearn's normalize."""
    check_task_args("confusion_matrix", task, num_classes, num_labels, None, ignore_index,
                    threshold)
    cm = confmat_update(preds, target, task, num_classes, num_labels, threshold, ignore_index,
                        validate_args)
    return normalize_confmat(cm, normalize)


def _curve(
    kind: str, preds: Tensor, target: Tensor, task: Task, num_classes: int | None,
    num_labels: int | None, average: Average, thresholds: int | Sequence[float] | Tensor | None,
    ignore_index: int | None, validate_args: bool,
) -> Tensor:
    name = "auroc" if kind == "auroc" else "average_precision"
    check_task_args(name, task, num_classes, num_labels, average, ignore_index)
    preds, target = format_curve_inputs(preds, target, task, num_classes, num_labels,
                                        validate_args, _eager_check, name)
    if validate_args:
        validate_curve_values(preds, target, task, num_classes, ignore_index, _eager_check,
                              name, thresholds is not None)
    if thresholds is None:
        return curve_score_exact(preds, target, task, kind, average, num_classes,  # type: ignore[arg-type]
                                 ignore_index)
    th = make_thresholds(thresholds, name).to(preds.device)
    hist = binned_update(preds, target, th, task, num_classes, ignore_index)
    return curve_score_binned(hist, task, kind, average)  # type: ignore[arg-type]


def auroc(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, average: Average = "macro",
    thresholds: int | Sequence[float] | Tensor | None = None, ignore_index: int | None = None,
    validate_args: bool = True,
) -> Tensor:
    """Area under the ROC curve (sklearn roc_auc_score; multiclass one-vs-rest)."""
    return _curve("auroc", preds, target, task, num_classes, num_labels, average, thresholds,
                  ignore_index, validate_args)


def average_precision(
    preds: Tensor, target: Tensor, task: Task, num_classes: int | None = None,
    num_labels: int | None = None, average: Average = "macro",
    thresholds: int | Sequence[float] | Tensor | None = None, ignore_index: int | None = None,
    validate_args: bool = True,
) -> Tensor:
    """Average precision (sklearn average_precision_score; multiclass one-vs-rest)."""
    return _curve("ap", preds, target, task, num_classes, num_labels, average, thresholds,
                  ignore_index, validate_args)
