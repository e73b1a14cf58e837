"""Classification metrics (binary / multiclass / multilabel), scikit-learn's conventions.

Accuracy, Precision, Recall, F1Score, FBetaScore, Specificity and ConfusionMatrix keep one
state, the confusion matrix of their task (int64, synced by one 'sum'), so a MetricCollection
updates it once per batch for all of them (a compute group). AUROC and AveragePrecision keep
the scores ('cat' states, exact) or, with ``thresholds=``, a fixed-size histogram.
See :mod:`trainer.metrics.functional.classification` for the exact conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import add, truediv
from typing import Any

import torch
from torch import Tensor

from trainer.metrics.functional import classification as F
from trainer.metrics.metric import Metric

__all__ = [
    "AUROC",
    "Accuracy",
    "AveragePrecision",
    "ConfusionMatrix",
    "F1Score",
    "FBetaScore",
    "Precision",
    "Recall",
    "Specificity",
]


class _ConfmatMetric(Metric):
    """Shared base: a confusion-matrix state for the task (or a top-k state)."""

    higher_is_better = True
    _kind = ""
    _pure_update = True

    def __init__(
        self,
        task: F.Task,
        num_classes: int | None = None,
        num_labels: int | None = None,
        threshold: float = 0.5,
        average: F.Average = "micro",
        ignore_index: int | None = None,
        zero_division: object = "warn",
        top_k: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        F.check_task_args(name, task, num_classes, num_labels, average, ignore_index, threshold)
        F.check_zero_division(name, zero_division)
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"{name}.top_k: must be an int >= 1 (got {top_k!r})")
        if top_k > 1 and task != "multiclass":
            raise ValueError(f"{name}.top_k: top_k > 1 needs task='multiclass' (got {task!r})")
        if top_k > 1 and num_classes is not None and top_k > num_classes:
            raise ValueError(f"{name}.top_k: must be <= num_classes={num_classes} (got {top_k})")
        self.task = task
        self.num_classes = num_classes if task == "multiclass" else None
        self.num_labels = num_labels if task == "multilabel" else None
        self.threshold = float(threshold)
        self.average = average
        self.ignore_index = ignore_index
        self.zero_division = zero_division
        self.top_k = top_k
        if top_k > 1:
            default = torch.zeros(2, int(num_classes), dtype=torch.int64)  # type: ignore[arg-type]
            self.add_state("topk_stats", default, "sum")
        elif task == "binary":
            self.add_state("confmat", torch.zeros(2, 2, dtype=torch.int64), "sum")
        elif task == "multiclass":
            c = int(num_classes)  # type: ignore[arg-type]
            self.add_state("confmat", torch.zeros(c, c, dtype=torch.int64), "sum")
        else:
            n = int(num_labels)  # type: ignore[arg-type]
            self.add_state("confmat", torch.zeros(n, 2, 2, dtype=torch.int64), "sum")
        # multiclass scores (N, C) + labels (N,) on the CPU: a lean path (see update)
        self._lean = task == "multiclass" and top_k == 1 and ignore_index is None
        # accuracy = trace / sum of a small (C, C) state (Accuracy.compute reads it on the host)
        self._trace_accuracy = top_k == 1 and (
            task == "binary"
            or (task == "multiclass" and average in ("micro", "weighted")
                and int(num_classes) ** 2 <= F._HOST_MAX)  # type: ignore[arg-type]
        )

    def _compute_group_key(self) -> tuple:
        """Metrics with equal keys share their state in a MetricCollection."""
        return ("confmat", self.task, self.num_classes, self.num_labels, self.threshold,
                self.ignore_index, self.top_k, self.validate_args)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch of predictions and targets."""
        if self._lean and preds.dim() == 2 and target.dim() == 1 and preds.is_cpu:
            c = self.num_classes
            if not self.validate_args or (
                preds.shape[1] == c and preds.shape[0] == target.shape[0]
                and preds.is_floating_point() and not target.is_floating_point()
                and not target.is_complex()
            ):
                # argmax, one combined index, one count: the count checks the target range
                # (a negative label fails, one >= C lengthens the counts)
                try:
                    counts = torch.bincount(torch.add(preds.argmax(1), target, alpha=c),
                                            minlength=c * c)  # type: ignore[operator]
                except RuntimeError:
                    counts = None
                if counts is not None and counts.numel() == c * c:  # type: ignore[operator]
                    self._accumulate("confmat", counts.view(c, c))  # type: ignore[arg-type]
                    return
            # bad input (or too-long counts without validation): the general path below
            # raises the clear error, or drops the out-of-range counts
        if self.top_k > 1:
            st = F.topk_update(preds, target, self.num_classes, self.top_k,  # type: ignore[arg-type]
                               self.ignore_index, self.validate_args, self._check,
                               type(self).__name__)
            self._accumulate("topk_stats", st)
            return
        cm = F.confmat_update(preds, target, self.task, self.num_classes, self.num_labels,
                              self.threshold, self.ignore_index, self.validate_args, self._check,
                              type(self).__name__)
        self._accumulate("confmat", cm)

    def extra_repr(self) -> str:
        parts = [f"task={self.task!r}"]
        if self.num_classes:
            parts.append(f"num_classes={self.num_classes}")
        if self.num_labels:
            parts.append(f"num_labels={self.num_labels}")
        parts.append(f"average={self.average!r}")
        return ", ".join(parts)


class Accuracy(_ConfmatMetric):
    """Accuracy. binary / multiclass micro: sklearn ``accuracy_score``; multiclass macro:
    ``balanced_accuracy_score`` (mean recall over classes present in the target); 'none':
    per-class recall; multilabel: per-label accuracy (micro = ``1 - hamming_loss``);
    ``top_k`` (multiclass): ``top_k_accuracy_score``."""

    def compute(self) -> Tensor:
        """The accuracy of everything accumulated."""
        d = self.__dict__
        if d.get("_trace_accuracy"):
            cm = d["confmat"]
            if cm.is_cpu:  # one host copy, the trace and the total in Python (forward's path)
                rows = cm.tolist()
                total = sum(map(sum, rows))
                if total:
                    return torch.scalar_tensor(
                        sum(map(list.__getitem__, rows, range(len(rows)))) / total)
        if self.top_k > 1:
            return F.reduce_accuracy(self.topk_stats, self.task, self.average, self.top_k,
                                     self.zero_division)
        return F.reduce_accuracy(self.confmat, self.task, self.average, 1, self.zero_division)


class Precision(_ConfmatMetric):
    """Precision tp / (tp + fp), sklearn ``precision_score`` (zero_division as sklearn)."""

    def compute(self) -> Tensor:
        """The precision of everything accumulated."""
        return F.reduce_prf(self.confmat, self.task, "precision", self.average, 1.0,
                            self.zero_division)


class Recall(_ConfmatMetric):
    """Recall tp / (tp + fn), sklearn ``recall_score``."""

    def compute(self) -> Tensor:
        """The recall of everything accumulated."""
        return F.reduce_prf(self.confmat, self.task, "recall", self.average, 1.0,
                            self.zero_division)


class Specificity(_ConfmatMetric):
    """Specificity tn / (tn + fp): the recall of the negative class (per class for
    multiclass / multilabel, averaged like recall)."""

    def compute(self) -> Tensor:
        """The specificity of everything accumulated."""
        return F.reduce_prf(self.confmat, self.task, "specificity", self.average, 1.0,
                            self.zero_division)


class FBetaScore(_ConfmatMetric):
    """F-beta, sklearn ``fbeta_score``."""

    def __init__(self, task: F.Task, beta: float = 1.0, **kwargs: Any) -> None:
        if not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"{type(self).__name__}.beta: must be a number >= 0 (got {beta!r})")
        super().__init__(task, **kwargs)
        self.beta = float(beta)
        self._macro_f1 = (self.beta == 1.0 and task == "multiclass" and self.average == "macro"
                          and self.top_k == 1 and int(self.num_classes) ** 2 <= F._HOST_MAX)  # type: ignore[arg-type]

    def compute(self) -> Tensor:
        """The F-beta score of everything accumulated."""
        d = self.__dict__
        if d.get("_macro_f1") and d["confmat"].is_cpu:
            # macro F1 of a small state on the host, short path (forward's): the general one
            # below where a class has no prediction and no target (zero division)
            rows = d["confmat"].tolist()
            den = list(map(add, map(sum, rows), map(sum, zip(*rows))))
            if all(den):
                tp = map(list.__getitem__, rows, range(len(rows)))
                return torch.scalar_tensor(2 * sum(map(truediv, tp, den)) / len(den))
        return F.reduce_prf(self.confmat, self.task, "fbeta", self.average, self.beta,
                            self.zero_division)


class F1Score(FBetaScore):
    """F1, sklearn ``f1_score``."""

    def __init__(self, task: F.Task, **kwargs: Any) -> None:
        super().__init__(task, beta=1.0, **kwargs)


class ConfusionMatrix(_ConfmatMetric):
    """Confusion matrix (rows = true class): (2, 2), (C, C), or (L, 2, 2) for multilabel as
    ``multilabel_confusion_matrix``; ``normalize`` 'true' | 'pred' | 'all' | None (sklearn)."""

    higher_is_better = None

    def __init__(self, task: F.Task, normalize: str | None = None, **kwargs: Any) -> None:
        if normalize not in ("true", "pred", "all", None):
            raise ValueError(
                f"ConfusionMatrix.normalize: must be 'true', 'pred', 'all' or None "
                f"(got {normalize!r})"
            )
        kwargs.pop("average", None)
        super().__init__(task, **kwargs)
        self.normalize = normalize

    def compute(self) -> Tensor:
        """The (normalised) confusion matrix."""
        return F.normalize_confmat(self.confmat, self.normalize)


class _CurveMetric(Metric):
    higher_is_better = True
    _pure_update = True
    _kind = "auroc"

    def __init__(
        self,
        task: F.Task,
        num_classes: int | None = None,
        num_labels: int | None = None,
        average: F.Average = "macro",
        thresholds: int | Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        F.check_task_args(name, task, num_classes, num_labels, average, ignore_index)
        self.task = task
        self.num_classes = num_classes if task == "multiclass" else None
        self.num_labels = num_labels if task == "multilabel" else None
        self.average = average
        self.ignore_index = ignore_index
        self._exact_binary = thresholds is None and task == "binary"
        # update is two appends (see _curve_update); compute_on_cpu moves the batches first
        self._append_only = self._exact_binary and not self.compute_on_cpu
        if thresholds is None:
            self.thresholds: Tensor | None = None
            self.add_state("preds", [], "cat")
            self.add_state("target", [], "cat")
        else:
            th = F.make_thresholds(thresholds, name)
            self.thresholds = th
            k = {"binary": 1, "multiclass": num_classes, "multilabel": num_labels}[task]
            self.add_state("hist", torch.zeros(int(k), th.numel() + 1, 2, dtype=torch.int64),  # type: ignore[arg-type]
                           "sum")

    def _compute_group_key(self) -> tuple:
        th = None if self.thresholds is None else tuple(self.thresholds.tolist())
        return ("curve", self.task, self.num_classes, self.num_labels, th, self.ignore_index,
                self.validate_args, self.compute_on_cpu)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch of scores and targets."""
        if self._exact_binary:
            # exact binary: an append of the (detached) tensors after a shape check; the
            # dtype and value checks run once over all data in compute() (forward checks its
            # batch at once through compute). _curve_update below is the same with the
            # wrapper's bookkeeping inline.
            if self.validate_args and preds.shape != target.shape:
                self._bad_binary_input(preds, target)
            if preds.dim() != 1:
                preds, target = preds.reshape(-1), target.reshape(-1)
            d = self.__dict__
            d["preds"].append(preds.detach() if preds.requires_grad else preds)
            d["target"].append(target.detach() if target.requires_grad else target)
            return
        if self.task == "binary" and self.ignore_index is None:
            self._accumulate("hist", self._binary_hist(preds, target))
            return
        name = type(self).__name__
        preds, target = F.format_curve_inputs(preds, target, self.task, self.num_classes,
                                              self.num_labels, self.validate_args, self._check,
                                              name)
        if self.thresholds is None:
            # exact mode: the value checks run once over all data in compute() (update stays
            # an append); forward checks its batch at once through compute
            if self.validate_args and not preds.is_floating_point():
                raise ValueError(f"{name}: preds must be float scores (got dtype {preds.dtype})")
            d = self.__dict__
            d["preds"].append(preds.detach())
            d["target"].append(target.detach())
            return
        if self.validate_args:
            if self._exact_binary:  # update only checked the shapes
                F.format_curve_inputs(preds, target, "binary", None, None, True,
                                      F._eager_check, type(self).__name__)
            F.validate_curve_values(preds, target, self.task, self.num_classes,
                                    self.ignore_index, self._check, name, True)
        th = self.thresholds
        if th.device != preds.device:
            th = self.thresholds = th.to(preds.device)
        self._accumulate("hist", F.binned_update(preds, target, th, self.task, self.num_classes,
                                                self.ignore_index))

    def _binary_hist(self, preds: Tensor, target: Tensor) -> Tensor:
        """The (1, T+1, 2) histogram of a binary batch in few ops: bin = how many thresholds
        are <= pred; counted at target * (T+1) + bin, so a target outside {0, 1} lands
        outside the counted range (the range check is the count itself, see _checked_count).
        """
        if self.validate_args and (
            preds.shape != target.shape or target.is_floating_point() or target.is_complex()
            or not preds.is_floating_point()
        ):
            self._bad_binary_input(preds, target)
        if preds.dim() != 1:
            preds, target = preds.reshape(-1), target.reshape(-1)
        th = self.thresholds
        assert th is not None
        cpu = preds.is_cpu
        if not (cpu and th.is_cpu) and th.device != preds.device:
            th = self.thresholds = th.to(preds.device)
        name = type(self).__name__
        if self.validate_args:
            F._check_probs(name, preds, self._check)
        n_t = th.numel() + 1
        idx = torch.add(torch.searchsorted(th, preds, right=True), target, alpha=n_t)
        counts = None
        if cpu:
            try:
                counts = torch.bincount(idx, minlength=2 * n_t)
            except RuntimeError:
                counts = None
            if counts is not None and counts.numel() != 2 * n_t:
                counts = None
        if counts is None:  # an accelerator, or a target outside {0, 1}: the checked count
            counts = F._checked_count(idx, 2 * n_t, self.validate_args, self._check,
                                      lambda: F._range_message(name, target, 2, None))
        return counts.as_strided((1, n_t, 2), (2 * n_t, 1, n_t))  # (1, T+1, 2) view

    def _bad_binary_input(self, preds: Tensor, target: Tensor) -> None:
        name = type(self).__name__
        F.format_curve_inputs(preds, target, self.task, None, None, True, self._check, name)
        raise ValueError(f"{name}: preds must be float scores (got dtype {preds.dtype})")

    def compute(self) -> Tensor:
        """The score of everything accumulated."""
        if self.thresholds is not None:
            return F.curve_score_binned(self.hist, self.task, self._kind, self.average)  # type: ignore[arg-type]
        d = self.__dict__
        if not d["preds"]:
            return torch.tensor(float("nan"))
        preds = torch.cat(d["preds"]) if len(d["preds"]) > 1 else d["preds"][0]
        target = torch.cat(d["target"]) if len(d["target"]) > 1 else d["target"][0]
        if d["_exact_binary"] and d["ignore_index"] is None:
            # update flattened the batches and checked their shapes: the dtype and value
            # checks, then the score (forward's path: no reshapes, no general formatting)
            if d["validate_args"]:
                name = type(self).__name__
                F._check_int_target(name, target)
                F._check_range(name, "target", target, 2, None, F._eager_check)
                if not preds.is_floating_point():
                    raise ValueError(f"{name}: preds must be float scores (got dtype "
                                     f"{preds.dtype})")
            return F._binary_curve_score(preds, target, self._kind,
                                         rank_dtype=torch.float32).float()
        if self.validate_args:
            if self._exact_binary:  # update only checked the shapes
                F.format_curve_inputs(preds, target, "binary", None, None, True,
                                      F._eager_check, type(self).__name__)
            F.validate_curve_values(preds, target, self.task, self.num_classes,
                                    self.ignore_index, F._eager_check, type(self).__name__,
                                    False)
        return F.curve_score_exact(preds, target, self.task, self._kind, self.average,  # type: ignore[arg-type]
                                   self.num_classes, self.ignore_index)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_append_only" not in state:  # pickled by an older version
            state["_append_only"] = state["_exact_binary"] and not state["compute_on_cpu"]
        super().__setstate__(state)

    def _apply(self, fn: Any, recurse: bool = True) -> Metric:  # type: ignore[override]
        super()._apply(fn, recurse)
        if self.thresholds is not None:
            self.thresholds = fn(self.thresholds)
        return self


_curve_update_wrapped = _CurveMetric.update


def _curve_update(self: _CurveMetric, preds: Tensor, target: Tensor) -> None:
    """Accumulate a batch of scores and targets."""
    d = self.__dict__
    if d["_append_only"]:
        # the exact binary append with the update bookkeeping inline (the hot path of a
        # validation loop): a shape check, two appends
        if preds.shape != target.shape and d["validate_args"]:
            self._bad_binary_input(preds, target)
        if preds.dim() != 1:
            preds, target = preds.reshape(-1), target.reshape(-1)
        d["preds"].append(preds.detach() if preds.requires_grad else preds)
        d["target"].append(target.detach() if target.requires_grad else target)
        d["_computed"] = None
        d["_update_count"] += 1
        return
    _curve_update_wrapped(self, preds, target)


_curve_update._raw = _curve_update_wrapped._raw  # type: ignore[attr-defined]
_CurveMetric.update = _curve_update  # type: ignore[method-assign]


class AUROC(_CurveMetric):
    """Area under the ROC curve, sklearn ``roc_auc_score`` (multiclass: one-vs-rest).
    One class only in the target: nan plus an UndefinedMetricWarning (sklearn 1.9).

    Where bad input is reported. Exact mode (``thresholds=None``): ``update`` checks shapes
    (multiclass / multilabel: also the target dtype) and appends; the value checks (float
    scores, integer targets in range: {0, 1} for binary) run once over all the accumulated
    data in ``compute()``, with the same message (the metric, what is wrong, the offending
    values). Binary exact ``update`` is two appends after a shape check, its dtypes are checked
    in ``compute()`` too. ``forward`` computes its batch value, so it raises at once. Binned
    mode (``thresholds=``) checks everything in ``update`` (preds must be probabilities in
    [0, 1]).
    """

    _kind = "auroc"


class AveragePrecision(_CurveMetric):
    """Average precision, sklearn ``average_precision_score`` (multiclass: one-vs-rest).
    No positive sample: 0.0 plus an UndefinedMetricWarning (sklearn). Bad input is reported
    as for :class:`AUROC` (exact mode: values checked in ``compute()``)."""

    _kind = "ap"
