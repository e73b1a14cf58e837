"""Metrics on CUDA (skipped without a GPU): same values as CPU, no host sync in update,
deferred input errors, compute_on_cpu."""

from __future__ import annotations

import pytest
import torch

from trainer.metrics import (
    AUROC,
    Accuracy,
    AveragePrecision,
    ConfusionMatrix,
    F1Score,
    MeanSquaredError,
    MetricCollection,
    Precision,
    R2Score,
    Recall,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _makers():
    return {
        "acc": lambda: Accuracy("multiclass", num_classes=5),
        "acc_ign": lambda: Accuracy("multiclass", num_classes=5, average="macro", ignore_index=-1),
        "top2": lambda: Accuracy("multiclass", num_classes=5, top_k=2),
        "f1": lambda: F1Score("multiclass", num_classes=5, average="macro"),
        "prec_ml": lambda: Precision("multilabel", num_labels=5, average="weighted"),
        "cm_bin": lambda: ConfusionMatrix("binary"),
        "auroc": lambda: AUROC("multiclass", num_classes=5),
        "auroc_binned": lambda: AUROC("multiclass", num_classes=5, thresholds=50),
        "ap": lambda: AveragePrecision("multilabel", num_labels=5),
        "mse": lambda: MeanSquaredError(),
        "r2": lambda: R2Score(),
    }


def _inputs(name, g):
    scores = torch.randn(64, 5, generator=g).softmax(1)
    labels = torch.randint(0, 5, (64,), generator=g)
    if name == "acc_ign":
        labels[::7] = -1
    if name in ("prec_ml", "ap"):
        return torch.rand(64, 5, generator=g), torch.randint(0, 2, (64, 5), generator=g)
    if name == "cm_bin":
        return torch.rand(64, generator=g), torch.randint(0, 2, (64,), generator=g)
    if name in ("mse", "r2"):
        return torch.randn(64, generator=g), torch.randn(64, generator=g)
    return scores, labels


@pytest.mark.parametrize("name", list(_makers()))
def test_cuda_equals_cpu_without_host_sync_in_update(name):
    cpu, gpu = _makers()[name](), _makers()[name]().cuda()
    g = torch.Generator().manual_seed(0)
    batches = [_inputs(name, g) for _ in range(3)]
    torch.cuda.synchronize()
    for i, (p, t) in enumerate(batches):
        pc, tc = p.cuda(), t.cuda()
        cpu.update(p, t)
        torch.cuda.set_sync_debug_mode("error")  # any host sync raises
        try:
            gpu.update(pc, tc)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        if i == 2:
            gpu(pc, tc)
            cpu(p, t)
    a, b = cpu.compute(), gpu.compute()
    assert b.device.type == "cuda" or name.startswith("auroc") or name == "ap"
    torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_cuda_bad_input_error_is_deferred_to_compute():
    m = Accuracy("multiclass", num_classes=3).cuda()
    m.update(torch.tensor([0, 1, 2], device="cuda"), torch.tensor([0, 5, 1], device="cuda"))
    with pytest.raises(ValueError, match=r"target must be in \[0, 2\]"):
        m.compute()
    b = Precision("binary").cuda()
    b.update(torch.tensor([0.5, 1.7], device="cuda"), torch.tensor([0, 1], device="cuda"))
    with pytest.raises(ValueError, match="probabilities"):
        b.compute()
    with pytest.raises(ValueError, match="probabilities"):
        Precision("binary").cuda()(torch.tensor([1.5], device="cuda"),
                                   torch.tensor([1], device="cuda"))


def test_compute_on_cpu_keeps_cat_states_on_cpu():
    m = AUROC("binary", compute_on_cpu=True).cuda()
    p = torch.rand(100, device="cuda")
    t = (torch.rand(100, device="cuda") > 0.5).long()
    m.update(p, t)
    assert all(x.device.type == "cpu" for x in m.preds)
    ref = AUROC("binary")
    ref.update(p.cpu(), t.cpu())
    torch.testing.assert_close(m.compute().cpu(), ref.compute())


def test_collection_moves_with_module():
    mc = MetricCollection([Accuracy("multiclass", num_classes=3),
                           Recall("multiclass", num_classes=3, average="macro")]).cuda()
    assert mc["Recall"].confmat is mc["Accuracy"].confmat
    assert mc["Accuracy"].confmat.device.type == "cuda"
    mc.update(torch.randn(8, 3, device="cuda"), torch.randint(0, 3, (8,), device="cuda"))
    assert mc["Recall"].confmat is mc["Accuracy"].confmat
    assert int(mc["Accuracy"].confmat.sum()) == 8
