"""Classification metrics against scikit-learn on seeded random inputs (1e-6)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from trainer.metrics import (
    AUROC,
    Accuracy,
    AveragePrecision,
    ConfusionMatrix,
    F1Score,
    FBetaScore,
    Precision,
    Recall,
    Specificity,
    UndefinedMetricWarning,
)
from trainer.metrics import functional as FM

C = 5
L = 4
N = 120
IGN = -1


def _close(ours: torch.Tensor, ref, atol: float = 1e-6) -> None:
    ours_np = ours.detach().cpu().double().numpy()
    np.testing.assert_allclose(ours_np, np.asarray(ref, dtype=np.float64), atol=atol, rtol=1e-6)


def _batches(*tensors: torch.Tensor, n: int = 3):
    """Split along dim 0 into n uneven batches."""
    cuts = [0, 17, 61, tensors[0].shape[0]]
    for a, b in zip(cuts[:-1], cuts[1:]):
        yield tuple(t[a:b] for t in tensors)


def _run(metric, preds, target):
    """Accumulate with update and forward alternately; return compute()."""
    for i, (p, t) in enumerate(_batches(preds, target)):
        if i % 2:
            metric(p, t)
        else:
            metric.update(p, t)
    return metric.compute()


def _data(task: str, seed: int = 0, ignore: bool = False):
    g = torch.Generator().manual_seed(seed)
    if task == "binary":
        preds = torch.rand(N, generator=g)
        target = torch.randint(0, 2, (N,), generator=g)
    elif task == "multiclass":
        preds = torch.randn(N, C, generator=g).softmax(1)
        target = torch.randint(0, C, (N,), generator=g)
    else:
        preds = torch.rand(N, L, generator=g)
        target = torch.randint(0, 2, (N, L), generator=g)
    if ignore:
        target = target.masked_fill(torch.rand(target.shape, generator=g) < 0.2, IGN)
    return preds, target


def _sk_labels(task, preds, target, threshold=0.5):
    """Hard predictions and targets as numpy with ignored entries removed (not multilabel)."""
    if task == "binary":
        p = (preds >= threshold).long()
    elif task == "multiclass":
        p = preds.argmax(1)
    else:
        p = (preds >= threshold).long()
    if task != "multilabel":
        keep = target != IGN
        return p[keep].numpy(), target[keep].numpy()
    return p.numpy(), target.numpy()


PRF = [
    (Precision, skm.precision_score, {}),
    (Recall, skm.recall_score, {}),
    (F1Score, skm.f1_score, {}),
    (FBetaScore, skm.fbeta_score, {"beta": 0.5}),
]


# multilabel with ignore_index: see test_multilabel_ignore_index (sklearn has no such mask)
TASK_IGNORE = [("binary", False), ("binary", True), ("multiclass", False),
               ("multiclass", True), ("multilabel", False)]


@pytest.mark.parametrize("task,ignore", TASK_IGNORE)
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
@pytest.mark.parametrize("cls,skfn,extra", PRF, ids=[c[0].__name__ for c in PRF])
def test_prf_matches_sklearn(cls, skfn, extra, task, average, ignore):
    preds, target = _data(task, seed=hash((task, average)) % 1000, ignore=ignore)
    kw = {"num_classes": C} if task == "multiclass" else {"num_labels": L}
    m = cls(task=task, average=average, ignore_index=IGN if ignore else None, **kw, **extra)
    ours = _run(m, preds, target)
    p, t = _sk_labels(task, preds, target)
    if task == "binary":
        ref = skfn(t, p, average="binary", **extra)
    else:
        labels = list(range(C if task == "multiclass" else L))
        ref = skfn(t, p, average=None if average == "none" else average,
                   labels=labels if task == "multiclass" else None, **extra)
    _close(ours, ref)
    # the functional form agrees
    fn = {Precision: FM.precision, Recall: FM.recall, F1Score: FM.f1_score}.get(cls)
    if fn is not None:
        _close(fn(preds, target, task, average=average, ignore_index=IGN if ignore else None,
                  **kw), ref)


def test_multilabel_ignore_index():
    preds, target = _data("multilabel", seed=3)
    g = torch.Generator().manual_seed(4)
    tgt = target.masked_fill(torch.rand(target.shape, generator=g) < 0.2, IGN)
    for average in ["macro", "none"]:
        ours = _run(Recall("multilabel", num_labels=L, average=average, ignore_index=IGN),
                    preds, tgt)
        per = []
        for j in range(L):
            keep = tgt[:, j] != IGN
            per.append(skm.recall_score(tgt[keep, j].numpy(), (preds[keep, j] >= 0.5).long()))
        _close(ours, np.mean(per) if average == "macro" else per)


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_binary_threshold(threshold):
    preds, target = _data("binary", seed=5)
    ours = _run(Precision("binary", threshold=threshold), preds, target)
    _close(ours, skm.precision_score(target.numpy(), (preds >= threshold).long().numpy()))


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
def test_multiclass_accuracy(average, ignore):
    preds, target = _data("multiclass", seed=7, ignore=ignore)
    m = Accuracy("multiclass", num_classes=C, average=average,
                 ignore_index=IGN if ignore else None)
    ours = _run(m, preds, target)
    p, t = _sk_labels("multiclass", preds, target)
    if average in ("micro", "weighted"):
        ref = skm.accuracy_score(t, p)
    elif average == "macro":
        ref = skm.balanced_accuracy_score(t, p)
    else:
        ref = skm.recall_score(t, p, average=None, labels=list(range(C)))
    _close(ours, ref)


def test_binary_and_int_label_accuracy():
    preds, target = _data("binary", seed=8)
    _close(_run(Accuracy("binary"), preds, target),
           skm.accuracy_score(target.numpy(), (preds >= 0.5).numpy()))
    labels = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(9))
    tgt = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(10))
    _close(_run(Accuracy("multiclass", num_classes=C), labels, tgt),
           skm.accuracy_score(tgt.numpy(), labels.numpy()))


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
def test_multilabel_accuracy(average):
    preds, target = _data("multilabel", seed=11)
    ours = _run(Accuracy("multilabel", num_labels=L, average=average), preds, target)
    p = (preds >= 0.5).long().numpy()
    t = target.numpy()
    per = np.array([skm.accuracy_score(t[:, j], p[:, j]) for j in range(L)])
    if average == "micro":
        ref = 1 - skm.hamming_loss(t, p)
    elif average == "macro":
        ref = per.mean()
    elif average == "weighted":
        ref = np.average(per, weights=t.sum(0))
    else:
        ref = per
    _close(ours, ref)


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_top_k_accuracy(k, ignore):
    preds, target = _data("multiclass", seed=12, ignore=ignore)
    ours = _run(Accuracy("multiclass", num_classes=C, top_k=k,
                         ignore_index=IGN if ignore else None), preds, target)
    keep = target != IGN
    ref = skm.top_k_accuracy_score(target[keep].numpy(), preds[keep].numpy(), k=k,
                                   labels=list(range(C)))
    _close(ours, ref)
    # macro: mean over classes of per-class top-k recall
    m = Accuracy("multiclass", num_classes=C, top_k=k, average="macro",
                 ignore_index=IGN if ignore else None)
    ours_macro = _run(m, preds, target)
    top = np.argsort(-preds[keep].numpy(), axis=1)[:, :k]
    t = target[keep].numpy()
    hit = (top == t[:, None]).any(1)
    ref_macro = np.mean([hit[t == c].mean() for c in range(C) if (t == c).any()])
    _close(ours_macro, ref_macro)


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_specificity(task, average):
    preds, target = _data(task, seed=13)
    kw = {"num_classes": C} if task == "multiclass" else {"num_labels": L}
    ours = _run(Specificity(task, average=average, **kw), preds, target)
    p, t = _sk_labels(task, preds, target)
    if task == "binary":
        cm = skm.confusion_matrix(t, p, labels=[0, 1])
        _close(ours, cm[0, 0] / (cm[0, 0] + cm[0, 1]))
        return
    mcm = skm.multilabel_confusion_matrix(t, p, labels=list(range(C)) if task == "multiclass"
                                          else None)
    tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
    per = tn / (tn + fp)
    ref = {"micro": tn.sum() / (tn.sum() + fp.sum()), "macro": per.mean(),
           "weighted": np.average(per, weights=tp + fn), "none": per}[average]
    _close(ours, ref)


@pytest.mark.parametrize("normalize", [None, "true", "pred", "all"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_confusion_matrix(task, normalize):
    preds, target = _data(task, seed=14, ignore=task != "multilabel")
    kw = {"num_classes": C} if task == "multiclass" else {"num_labels": L}
    ign = IGN if task != "multilabel" else None
    ours = _run(ConfusionMatrix(task, normalize=normalize, ignore_index=ign, **kw), preds, target)
    p, t = _sk_labels(task, preds, target)
    if task == "multilabel":
        ref = skm.multilabel_confusion_matrix(t, p).astype(np.float64)
        if normalize is not None:
            ref = np.stack([
                np.nan_to_num(_norm(r, normalize)) for r in ref
            ])
    else:
        labels = [0, 1] if task == "binary" else list(range(C))
        ref = skm.confusion_matrix(t, p, labels=labels, normalize=normalize)
    _close(ours, ref)


def _norm(cm: np.ndarray, normalize: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        if normalize == "true":
            return cm / cm.sum(1, keepdims=True)
        if normalize == "pred":
            return cm / cm.sum(0, keepdims=True)
        return cm / cm.sum()


# ------------------------------------------------------------------ curves
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("cls", [AUROC, AveragePrecision])
def test_curves_exact(cls, task, average, ignore):
    preds, target = _data(task, seed=15, ignore=ignore)
    if task == "binary":
        preds = (preds * 20).round() / 20  # ties between scores
    kw = {"num_classes": C} if task == "multiclass" else {"num_labels": L}
    ign = IGN if ignore else None
    ours = _run(cls(task, average=average, ignore_index=ign, **kw), preds, target)
    skfn = skm.roc_auc_score if cls is AUROC else skm.average_precision_score
    avg = None if average == "none" else average
    if task == "binary":
        keep = target != IGN
        ref = skfn(target[keep].numpy(), preds[keep].numpy())
    elif task == "multiclass":
        keep = target != IGN
        y = label_binarize(target[keep].numpy(), classes=list(range(C)))
        ref = skfn(y, preds[keep].numpy(), average=avg)
    else:
        if ignore:
            per = [skfn(target[target[:, j] != IGN, j].numpy(),
                        preds[target[:, j] != IGN, j].numpy()) for j in range(L)]
            keep = target != IGN
            sup = np.array([(target[:, j] == 1).sum().item() for j in range(L)])
            ref = {"micro": skfn(target[keep].numpy(), preds[keep].numpy()),
                   "macro": np.mean(per), "weighted": np.average(per, weights=sup),
                   "none": per}[average]
        else:
            ref = skfn(target.numpy(), preds.numpy(), average=avg)
    _close(ours, ref)
    fn = FM.auroc if cls is AUROC else FM.average_precision
    _close(fn(preds, target, task, average=average, ignore_index=ign, **kw), ref)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("cls", [AUROC, AveragePrecision])
def test_curves_binned_exact_on_grid(cls, task):
    """Binned mode equals the exact score when the scores lie on the threshold grid."""
    n_th = 11
    preds, target = _data(task, seed=16)
    preds = (preds * (n_th - 1)).round() / (n_th - 1)
    grid = torch.linspace(0, 1, n_th)
    preds = grid[(preds * (n_th - 1)).round().long()]
    kw = {"num_classes": C} if task == "multiclass" else {"num_labels": L}
    ours = _run(cls(task, thresholds=n_th, **kw), preds, target)
    exact = _run(cls(task, **kw), preds, target)
    _close(ours, exact.numpy())
    assert cls(task, thresholds=n_th, **kw).hist.numel() == {
        "binary": 1, "multiclass": C, "multilabel": L}[task] * (n_th + 1) * 2


def test_single_class_auroc_is_nan_with_warning():
    preds = torch.rand(20)
    for y in (torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.long)):
        m = AUROC("binary")
        m.update(preds, y)
        with pytest.warns(UndefinedMetricWarning, match="one class"):
            assert torch.isnan(m.compute())
    m = AveragePrecision("binary")
    m.update(preds, torch.zeros(20, dtype=torch.long))
    with pytest.warns(UndefinedMetricWarning, match="No positive"):
        assert float(m.compute()) == 0.0


# ------------------------------------------------------------------ edge cases
def test_zero_division_absent_class_follows_sklearn():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 0])  # class 2 never predicted; class 3 absent
    for zd in ["warn", 0, 1, float("nan")]:
        for average in ["macro", "weighted", "none", "micro"]:
            m = Precision("multiclass", num_classes=4, average=average, zero_division=zd)
            m.update(preds, target)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                ours = m.compute()
                ref = skm.precision_score(target.numpy(), preds.numpy(), labels=[0, 1, 2, 3],
                                          average=None if average == "none" else average,
                                          zero_division=zd)
            _close(ours, ref) if not np.all(np.isnan(ref)) else None
            if zd == "warn" and average != "micro":
                assert any(issubclass(w.category, UndefinedMetricWarning) for w in rec)
    f1 = F1Score("multiclass", num_classes=4, average="macro")
    f1.update(preds, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = skm.f1_score(target, preds, labels=[0, 1, 2, 3], average="macro")
    with pytest.warns(UndefinedMetricWarning):
        _close(f1.compute(), ref)


def test_forward_value_equals_fresh_compute_and_accumulates():
    preds, target = _data("multiclass", seed=20)
    m = F1Score("multiclass", num_classes=C, average="macro")
    batches = list(_batches(preds, target))
    for p, t in batches:
        v = m(p, t)
        fresh = F1Score("multiclass", num_classes=C, average="macro")
        fresh.update(p, t)
        _close(v, fresh.compute().numpy())
        assert m._forward_cache is v
    _close(m.compute(), skm.f1_score(target, preds.argmax(1), average="macro"))
    assert m.update_count == len(batches)
    a = AUROC("binary")
    p, t = _data("binary", seed=21)
    v = a(p[:50], t[:50])
    a(p[50:], t[50:])
    _close(v, skm.roc_auc_score(t[:50], p[:50]))
    _close(a.compute(), skm.roc_auc_score(t, p))


BAD = [
    (lambda: Accuracy("multiclass", num_classes=3), torch.tensor([0, 1]),
     torch.tensor([0, 1, 2]), "same shape"),
    (lambda: Accuracy("multiclass", num_classes=3), torch.tensor([0, 1, 2]),
     torch.tensor([0, 1, 3]), r"target must be in \[0, 2\]"),
    (lambda: Accuracy("multiclass", num_classes=3, ignore_index=-100), torch.tensor([0, 1, 2]),
     torch.tensor([0, -1, 1]), "or ignore_index=-100"),
    (lambda: Accuracy("multiclass", num_classes=3), torch.tensor([0, 1, 2]),
     torch.tensor([0.0, 1.0, 2.0]), "integer class labels"),
    (lambda: Precision("binary"), torch.tensor([0.2, 1.5]), torch.tensor([0, 1]),
     r"probabilities in \[0, 1\]"),
    (lambda: Recall("multilabel", num_labels=2), torch.tensor([[0.2, 0.5]]),
     torch.tensor([[0, 2]]), r"target must be in \[0, 1\]"),
    (lambda: AUROC("binary"), torch.tensor([0.2, 0.5]), torch.tensor([0, 2]),
     r"target must be in \[0, 1\]"),
    (lambda: AUROC("multiclass", num_classes=3), torch.rand(4, 2), torch.tensor([0, 1, 2, 0]),
     r"shape \(N, 3, ...\)"),
    (lambda: AUROC("binary", thresholds=5), torch.tensor([-0.2, 0.5]), torch.tensor([0, 1]),
     "probabilities"),
    (lambda: F1Score("multiclass", num_classes=3), torch.rand(4, 4), torch.tensor([0, 1, 2, 0]),
     r"shape \(N, 3, ...\)"),
    (lambda: Accuracy("multiclass", num_classes=3), torch.tensor([0.0, 1.0]),
     torch.tensor([0, 1]), "integer class indices"),
]


@pytest.mark.parametrize("make,preds,target,match", BAD)
def test_bad_inputs_raise_clear_errors(make, preds, target, match):
    m = make()
    with pytest.raises(ValueError, match=match):
        m(preds, target)
    assert m.update_count == 0  # a failed forward leaves the state alone
    if isinstance(m, AUROC) and m.thresholds is None and "shape" not in match:
        # exact curves: update only appends; the values are checked once, in compute()
        m.update(preds, target)
        with pytest.raises(ValueError, match=match):
            m.compute()
        return
    with pytest.raises(ValueError, match=match):
        m.update(preds, target)
    assert m.update_count == 0  # failed calls leave the state alone


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="task"):
        Accuracy("multi")
    with pytest.raises(ValueError, match="num_classes"):
        Accuracy("multiclass")
    with pytest.raises(ValueError, match="average"):
        Precision("binary", average="samples")
    with pytest.raises(ValueError, match="top_k"):
        Accuracy("binary", top_k=2)
    with pytest.raises(ValueError, match="zero_division"):
        Recall("binary", zero_division=2)
    with pytest.raises(ValueError, match="threshold"):
        Recall("binary", threshold=1.5)
    with pytest.raises(ValueError, match="thresholds"):
        AUROC("binary", thresholds=[0.5, 0.2])


def test_validate_args_false_skips_checks():
    m = Accuracy("multiclass", num_classes=3, validate_args=False)
    m.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    _close(m.compute(), 1.0)


@pytest.mark.filterwarnings("ignore::trainer.metrics.UndefinedMetricWarning")  # empty batches
def test_extra_dims_are_flattened_like_samples():
    g = torch.Generator().manual_seed(30)
    scores = torch.randn(6, C, 7, generator=g).softmax(1)  # (N, C, H)
    target = torch.randint(0, C, (6, 7), generator=g)
    flat_p = scores.movedim(1, -1).reshape(-1, C)
    flat_t = target.reshape(-1)
    _close(_run(F1Score("multiclass", num_classes=C, average="macro"), scores, target),
           skm.f1_score(flat_t, flat_p.argmax(1), average="macro"))
    _close(_run(AUROC("multiclass", num_classes=C, average="macro"), scores, target),
           skm.roc_auc_score(flat_t, flat_p, multi_class="ovr", labels=list(range(C))))
    ml_p = torch.rand(6, L, 5, generator=g)
    ml_t = torch.randint(0, 2, (6, L, 5), generator=g)
    _close(_run(Recall("multilabel", num_labels=L, average="macro"), ml_p, ml_t),
           skm.recall_score(ml_t.movedim(1, -1).reshape(-1, L),
                            (ml_p.movedim(1, -1).reshape(-1, L) >= 0.5).long(), average="macro"))
    b_p, b_t = torch.rand(5, 9, generator=g), torch.randint(0, 2, (5, 9), generator=g)
    _close(_run(Accuracy("binary"), b_p, b_t),
           skm.accuracy_score(b_t.reshape(-1), (b_p.reshape(-1) >= 0.5).long()))


@pytest.mark.parametrize("zero_division", ["warn", 0.0, 1.0, float("nan")])
def test_host_reductions_equal_the_tensor_path(monkeypatch, zero_division):
    """Small CPU confusion matrices reduce on the host; the tensor path gives the same values."""
    from trainer.metrics.functional import classification as FC

    g = torch.Generator().manual_seed(31)
    cms = [torch.randint(0, 6, (4, 4), generator=g) for _ in range(3)]
    cms[1][2] = 0  # a class absent from the target
    cms[2][:, 1] = 0  # a class never predicted
    cms.append(torch.zeros(4, 4, dtype=torch.int64))
    cms += [torch.randint(0, 6, (2, 2), generator=g), torch.tensor([[3, 0], [2, 0]])]

    def run():
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cm in cms:
                task = "binary" if cm.shape[0] == 2 else "multiclass"
                for average in ("micro", "macro", "weighted", "none"):
                    for kind, beta in (("precision", 1.0), ("recall", 1.0), ("fbeta", 1.0),
                                       ("fbeta", 0.5), ("specificity", 1.0)):
                        out.append(FC.reduce_prf(cm, task, kind, average, beta, zero_division))
                    out.append(FC.reduce_accuracy(cm, task, average, 1, zero_division))
        return out

    host = run()
    monkeypatch.setattr(FC, "_HOST_MAX", 0)
    tensor = run()
    for h, t in zip(host, tensor, strict=True):
        assert h.shape == t.shape
        np.testing.assert_allclose(h.double().numpy(), t.double().numpy(), rtol=1e-6,
                                   equal_nan=True)


@pytest.mark.parametrize("target,match", [
    (torch.tensor([0, 1, 3, 0]), r"target must be in \[0, 2\]"),
    (torch.tensor([0, -1, 2, 0]), r"target must be in \[0, 2\]"),
    (torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer class labels"),
])
def test_scores_path_bad_targets(target, match):
    """(N, C) scores with (N,) labels take the lean CPU path; bad labels still raise clearly."""
    scores = torch.rand(4, 3)
    for call in ("update", "forward"):
        m = Accuracy("multiclass", num_classes=3)
        with pytest.raises(ValueError, match=match):
            m.update(scores, target) if call == "update" else m(scores, target)
        assert m.update_count == 0 and int(m.confmat.sum()) == 0


def test_scores_path_without_validation_drops_out_of_range_labels():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    m = Accuracy("multiclass", num_classes=3, validate_args=False)
    m.update(scores, torch.tensor([0, 1, 5]))
    assert int(m.confmat.sum()) == 2 and float(m.compute()) == 1.0


def test_binary_auroc_with_ties_and_binned_fast_paths():
    """Exact binary AUROC (rank statistic) with heavy ties equals sklearn; the binned binary
    histogram path equals the generic binned computation; its bad labels raise clearly."""
    g = torch.Generator().manual_seed(41)
    preds = torch.randint(0, 5, (300,), generator=g) / 4.0  # on the grid of 5 thresholds
    target = torch.randint(0, 2, (300,), generator=g)
    ref = skm.roc_auc_score(target.numpy(), preds.numpy())
    _close(FM.auroc(preds, target, "binary"), ref)
    _close(AUROC("binary", thresholds=5)(preds, target), ref)
    off_grid = torch.rand(300, generator=g)
    m = AUROC("binary", thresholds=[0.1, 0.35, 0.6, 0.9])
    m.update(off_grid[:100], target[:100])
    m.update(off_grid[100:], target[100:])
    hist = m.hist
    from trainer.metrics.functional import classification as FC

    rev = hist.flip(1).cumsum(1).double()
    generic = FC._auc_from_counts(rev[0, :-1, 0], rev[0, :-1, 1], True).float()
    _close(m.compute(), generic.numpy())
    for bad in (torch.tensor([0, 2]), torch.tensor([-1, 1])):
        m = AUROC("binary", thresholds=5)
        with pytest.raises(ValueError, match=r"target must be in \[0, 1\]"):
            m(torch.tensor([0.2, 0.5]), bad)
        assert m.update_count == 0 and int(m.hist.sum()) == 0


def test_exact_binary_auroc_update_appends_and_checks_dtypes_in_compute():
    m = AUROC("binary")
    with pytest.raises(ValueError, match="same shape"):
        m.update(torch.rand(3), torch.tensor([0, 1]))
    assert m.update_count == 0 and m.preds == []
    with pytest.raises(ValueError, match="integer class labels"):
        m(torch.rand(2), torch.tensor([0.0, 1.0]))  # forward checks its batch at once
    assert m.update_count == 0 and m.preds == []
    m.update(torch.rand(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="integer class labels"):
        m.compute()
    m.reset()
    m.update(torch.tensor([1, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="float scores"):
        m.compute()
    p = torch.rand(4, requires_grad=True)
    m.reset()
    m.update(p, torch.tensor([0, 1, 1, 0]))
    assert not m.preds[0].requires_grad and m.update_count == 1
