"""The Metric base and MetricCollection on one process."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import Tensor, nn

from trainer.metrics import (
    AUROC,
    Accuracy,
    AveragePrecision,
    CatMetric,
    F1Score,
    MeanMetric,
    MeanSquaredError,
    Metric,
    MetricCollection,
    Precision,
    Recall,
    Specificity,
)


class Stats(Metric):
    """A metric with one state of each reduction."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.add_state("total", torch.zeros(()), "sum", persistent=True)
        self.add_state("hi", torch.tensor(float("-inf")), "max")
        self.add_state("lo", torch.tensor(float("inf")), "min")
        self.add_state("avg", torch.zeros(()), "mean")
        self.add_state("seen", [], "cat", persistent=True)

    def update(self, x: Tensor) -> None:
        self.total = self.total + x.sum()
        self.hi = torch.maximum(self.hi, x.max())
        self.lo = torch.minimum(self.lo, x.min())
        self.avg = self.avg + (x.mean() - self.avg) / (self.update_count + 1)  # running mean
        self.seen.append(x)

    def compute(self) -> dict[str, Tensor]:
        return {"total": self.total, "hi": self.hi, "lo": self.lo, "avg": self.avg,
                "n": torch.tensor(sum(t.numel() for t in self.seen))}


def test_forward_merges_by_reduction():
    m = Stats()
    xs = [torch.tensor([1.0, 5.0]), torch.tensor([-3.0, 2.0, 2.0]), torch.tensor([7.0])]
    for x in xs:
        v = m(x)
        assert float(v["total"]) == float(x.sum())
    out = m.compute()
    assert float(out["total"]) == 14.0
    assert float(out["hi"]) == 7.0 and float(out["lo"]) == -3.0
    assert float(out["avg"]) == pytest.approx((3.0 + 1 / 3 + 7.0) / 3)
    assert int(out["n"]) == 6
    assert m.update_count == 3


def test_compute_is_cached_until_update_and_reset():
    m = MeanSquaredError()
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    a = m.compute()
    assert m.compute() is a
    m.update(torch.tensor([3.0]), torch.tensor([0.0]))
    b = m.compute()
    assert b is not a and float(b) == pytest.approx(14 / 3)
    m.reset()
    assert m.update_count == 0 and m._forward_cache is None
    with pytest.warns(UserWarning, match="before any update"):
        assert torch.isnan(m.compute())


def test_state_dict_roundtrip_persistent_only():
    m = Stats()
    m.update(torch.tensor([1.0, 2.0]))
    sd = m.state_dict()
    assert set(sd) == {"total", "seen"}
    m2 = Stats()
    m2.load_state_dict(sd)
    assert float(m2.total) == 3.0 and torch.equal(m2.seen[0], torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="total"):
        Stats().load_state_dict({"seen": torch.zeros(0)})
    # a metric inside a module with non-persistent states adds nothing to its state_dict
    net = nn.Module()
    net.acc = Accuracy("binary")
    assert list(net.state_dict()) == []


def test_to_moves_states_keeps_dtypes():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.acc = Accuracy("multiclass", num_classes=3)
            self.cat = CatMetric()

    net = Net()
    net.cat.update(torch.tensor([1.0, 2.0]))
    net.double()
    assert net.acc.confmat.dtype == torch.int64
    assert net.cat.value[0].dtype == torch.float32
    net.to("meta")
    assert net.acc.confmat.device.type == "meta"
    assert net.acc._defaults["confmat"].device.type == "meta"
    assert net.cat.value[0].device.type == "meta"


def test_merge_state_and_clone():
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([4.0, -1.0, 0.5])
    a, b = Stats(), Stats()
    a.update(x)
    b.update(y)
    b.update(y)
    c = a.clone()
    a.merge_state(b)
    both = Stats()
    for t in (x, y, y):
        both.update(t)
    for k, v in both.compute().items():
        assert float(a.compute()[k]) == pytest.approx(float(v)), k
    assert float(c.compute()["total"]) == 3.0  # the clone is independent
    with pytest.raises(TypeError, match="Stats"):
        a.merge_state(MeanMetric())


def test_sync_context_local_and_pickle():
    m = Accuracy("binary")
    m.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))
    with m.sync_context():
        assert float(m.compute()) == 0.5
    m2 = pickle.loads(pickle.dumps(m))
    assert float(m2.compute()) == 0.5


def test_add_state_errors():
    m = Metric()
    with pytest.raises(ValueError, match="dist_reduce_fx"):
        m.add_state("x", torch.zeros(()), "median")
    with pytest.raises(ValueError, match="empty list"):
        m.add_state("x", torch.zeros(()), "cat")
    with pytest.raises(TypeError, match="tensor or an empty list"):
        m.add_state("x", 0.0)


def _five(**kw):
    return {
        "acc": Accuracy("multiclass", num_classes=4, **kw),
        "prec": Precision("multiclass", num_classes=4, average="macro", **kw),
        "rec": Recall("multiclass", num_classes=4, average="macro", **kw),
        "f1": F1Score("multiclass", num_classes=4, average="macro", **kw),
        "auroc": AUROC("multiclass", num_classes=4, **kw),
    }


@pytest.mark.filterwarnings("ignore::trainer.metrics.UndefinedMetricWarning")
def test_collection_groups_share_one_state_and_match_members():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 4, generator=g).softmax(1), torch.randint(0, 4, (n,), generator=g))
               for n in (10, 25, 7)]
    mc = MetricCollection(_five(), prefix="val_")
    assert mc.compute_groups == [["acc", "prec", "rec", "f1"], ["auroc"]]
    alone = _five()
    for i, (p, t) in enumerate(batches):
        if i == 1:
            mc.update(p, t)
            for m in alone.values():
                m.update(p, t)
            continue
        out = mc(p, t)
        for name, m in alone.items():
            assert torch.allclose(out["val_" + name], m(p, t), equal_nan=True), name
    # one shared state object, updated once per batch
    assert mc["prec"].confmat is mc["acc"].confmat
    assert int(mc["acc"].confmat.sum()) == 42
    res = mc.compute()
    assert set(res) == {"val_acc", "val_prec", "val_rec", "val_f1", "val_auroc"}
    for name, m in alone.items():
        assert torch.allclose(res["val_" + name], m.compute()), name
    mc.reset()
    assert int(mc["f1"].confmat.sum()) == 0
    c2 = mc.clone(prefix="test_")
    assert list(c2.keys())[0] == "test_acc"


def test_collection_ungrouped_and_kwargs_filter():
    mc = MetricCollection([MeanMetric(), Specificity("binary"), AveragePrecision("binary")],
                          compute_groups=False)
    assert len(mc.compute_groups) == 3
    mc2 = MetricCollection({"a": AUROC("binary"), "ap": AveragePrecision("binary")})
    assert mc2.compute_groups == [["a", "ap"]]
    with pytest.raises(ValueError, match="two metrics named"):
        MetricCollection([Accuracy("binary"), Accuracy("binary")])


def test_forward_after_load_state_dict_keeps_the_loaded_state():
    """A loaded state (update_count 0, not the default object) is merged with, not replaced."""
    m = Stats()
    m.update(torch.tensor([1.0, 2.0]))
    m2 = Stats()
    m2.load_state_dict(m.state_dict())
    v = m2(torch.tensor([4.0]))
    assert float(v["total"]) == 4.0
    assert float(m2.compute()["total"]) == 7.0


def test_forward_host_count_and_defaults_untouched():
    """MSE's batch count stays a host number inside forward; the states after forward are
    tensors of the declared dtypes, and no update writes into the shared default states."""
    g = torch.Generator().manual_seed(3)
    xs = [(torch.randn(n, generator=g), torch.randn(n, generator=g)) for n in (5, 8, 3)]
    m = MeanSquaredError()
    for i, (p, t) in enumerate(xs):
        v = m(p, t)
        fresh = MeanSquaredError()
        fresh.update(p, t)
        assert torch.equal(v, fresh.compute())
        assert m.total.dtype == torch.int64 and m.sum_squared_error.dtype == torch.float64
        assert int(m.total) == sum(len(q) for q, _ in xs[: i + 1])
    allp, allt = torch.cat([p for p, _ in xs]), torch.cat([t for _, t in xs])
    assert float(m.compute()) == pytest.approx(float(((allp - allt) ** 2).mean()), rel=1e-6)
    assert int(m._defaults["total"]) == 0 and float(m._defaults["sum_squared_error"]) == 0.0
    acc = Accuracy("multiclass", num_classes=3)
    assert acc.confmat is acc._defaults["confmat"]  # pure update: starts on the default
    acc.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    acc(torch.tensor([2, 2]), torch.tensor([2, 0]))
    assert int(acc._defaults["confmat"].sum()) == 0 and int(acc.confmat.sum()) == 5
