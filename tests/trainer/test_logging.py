"""self.log: defaults per hook, keys, weighted epoch means, tensors kept, loggers, errors."""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, make_data, make_loader
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer
from trainer.loggers import Logger
from trainer.strategy import SingleDeviceStrategy


class ListLogger(Logger):
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []
        self.hparams: dict = {}
        self.saves = 0
        self.status = None

    def log_hyperparams(self, params):
        self.hparams = params

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def save(self):
        self.saves += 1

    def finalize(self, status, error=None):
        self.status = status


def _trainer(**kw):
    kw.setdefault("logger", False)
    return Trainer(enable_checkpointing=False, enable_progress_bar=False,
                   num_sanity_val_steps=0, **kw)


class LogModule(TinyModule):
    def __init__(self, **opts):
        super().__init__()
        self.opts = opts

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss, **self.opts)
        self.log("bs", float(len(batch[0])), on_step=False, on_epoch=True, reduce_fx="max")
        self.log("seen", float(len(batch[0])), on_step=False, on_epoch=True, reduce_fx="sum")
        return loss

    def validation_step(self, batch, batch_idx):
        # a constant per batch equal to the batch size: the weighted mean is sum(b^2)/sum(b)
        self.log("val_b", float(len(batch[0])))


def test_defaults_per_hook_and_keys():
    m = LogModule()
    ds = make_data(n=20)
    t = _trainer(max_epochs=1)
    t.fit(m, make_loader(ds, batch_size=8), make_loader(ds, batch_size=8, shuffle=False))
    cm = t.callback_metrics
    assert "loss" in cm and "loss_epoch" not in cm  # training: on_step only by default
    assert "val_b" in cm and "val_b_step" not in cm  # validation: on_epoch only
    assert all(isinstance(v, torch.Tensor) for v in cm.values())
    assert cm["val_b"].item() == pytest.approx((64 + 64 + 16) / 20)  # weighted by batch size
    assert cm["bs"].item() == 8 and cm["seen"].item() == 20


def test_step_and_epoch_keys():
    m = LogModule(on_step=True, on_epoch=True, prog_bar=True)
    t = _trainer(max_epochs=1)
    t.fit(m, make_loader(make_data(n=24), batch_size=8))
    cm = t.callback_metrics
    assert {"loss_step", "loss_epoch", "loss"} <= set(cm)
    assert torch.equal(cm["loss"], cm["loss_epoch"])
    pb = t.progress_bar_metrics
    assert set(pb) == {"loss_step", "loss_epoch"} and all(isinstance(v, float) for v in pb.values())


def test_epoch_mean_is_weighted_by_batch_size():
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1)

    class M(TinyModule):
        def __init__(self):
            super().__init__(d_in=1)

        def training_step(self, batch, batch_idx):
            xb, _ = batch
            self.log("xmean", xb.mean(), on_epoch=True)
            return self(xb).sum() * 0

    dl = DataLoader(TensorDataset(x, torch.zeros(10, dtype=torch.long)), batch_size=4)
    t = _trainer(max_epochs=1)
    t.fit(M(), dl)
    assert t.callback_metrics["xmean_epoch"].item() == pytest.approx(4.5)  # not (1.5+5.5+8.5)/3


def test_no_host_sync_per_step(monkeypatch):
    """Logged values become Python numbers only at epoch end: the count of conversions does not
    grow with the number of steps (no logger, no progress bar)."""
    orig_item, orig_float = torch.Tensor.item, torch.Tensor.__float__

    def count(n_samples):
        calls = {"n": 0}

        def item(self):
            calls["n"] += 1
            return orig_item(self)

        def to_float(self):
            calls["n"] += 1
            return orig_float(self)

        m = LogModule(on_step=True, on_epoch=True, prog_bar=True)
        t = _trainer(max_epochs=1, on_nonfinite_loss="ignore")
        monkeypatch.setattr(torch.Tensor, "item", item)
        monkeypatch.setattr(torch.Tensor, "__float__", to_float)
        t.fit(m, make_loader(make_data(n=n_samples), batch_size=8))
        monkeypatch.undo()
        return calls["n"], t

    few, _ = count(16)
    many, t = count(160)
    assert few == many
    assert t.progress_bar_metrics["loss_step"] > 0  # converted when read


def test_loggers_receive_floats_every_n_steps_and_epoch_ends():
    lg = ListLogger()
    m = LogModule(on_step=True, on_epoch=True)
    ds = make_data(n=48)
    t = _trainer(max_epochs=2, logger=lg, log_every_n_steps=2)
    t.fit(m, make_loader(ds, batch_size=8), make_loader(ds, batch_size=16, shuffle=False))
    step_rows = [(s, r) for s, r in lg.rows if "loss_step" in r]
    assert [s for s, _ in step_rows] == [1, 3, 5, 7, 9, 11]
    assert all(isinstance(v, float) for _, r in step_rows for v in r.values())
    epoch_rows = [(s, r) for s, r in lg.rows if "loss_epoch" in r]
    assert [(s, r["epoch"]) for s, r in epoch_rows] == [(5, 0), (11, 1)]
    assert any("val_b" in r for _, r in lg.rows)
    assert lg.hparams["lr"] == 0.1 and lg.saves == 2 and lg.status == "success"
    assert t.logged_metrics["loss_epoch"] == pytest.approx(float(t.callback_metrics["loss_epoch"]))


def test_log_dict_and_metric_objects():
    from trainer.metrics import Accuracy

    class M(TinyModule):
        def __init__(self):
            super().__init__()
            self.acc = Accuracy(task="multiclass", num_classes=3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.acc(logits, y)
            self.log("train_acc", self.acc, on_step=True, on_epoch=True)
            self.log_dict({"a": 1.0, "b": torch.tensor(2.0)})
            return torch.nn.functional.cross_entropy(logits, y)

    m = M()
    t = _trainer(max_epochs=1)
    t.fit(m, make_loader(make_data(n=32), batch_size=8))
    cm = t.callback_metrics
    assert cm["a"].item() == 1.0 and cm["b"].item() == 2.0
    assert 0.0 <= cm["train_acc_epoch"].item() <= 1.0
    assert "train_acc_step" in cm


class RecordingReduce(SingleDeviceStrategy):
    def __init__(self):
        super().__init__("cpu")
        self.ops: list[str] = []

    def reduce(self, tensor, op="mean"):
        self.ops.append(op)
        return tensor


def test_sync_dist_goes_through_strategy_reduce():
    s = RecordingReduce()

    class M(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("l", loss, on_step=True, on_epoch=False, sync_dist=True)
            self.log("m", loss, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
            return loss

    _trainer(max_epochs=1, strategy=s).fit(M(), make_loader(make_data(n=16), batch_size=8))
    assert s.ops.count("mean") == 2  # the on_step value, once per step
    assert "max" in s.ops  # the epoch value, at epoch end


@pytest.mark.parametrize("where,match", [
    ("predict_step", "predict_step"),
    ("configure_optimizers", "configure_optimizers"),
])
def test_logging_where_it_makes_no_sense(where, match):
    class M(TinyModule):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            if where == "predict_step":
                self.log("x", 1.0)
            return self(batch[0])

        def configure_optimizers(self):
            if where == "configure_optimizers":
                self.log("x", 1.0)
            return super().configure_optimizers()

    dl = make_loader(make_data(n=8), shuffle=False)
    with pytest.raises(RuntimeError, match=match):
        if where == "predict_step":
            _trainer().predict(M(), dl)
        else:
            _trainer(max_epochs=1).fit(M(), dl)


def test_log_outside_a_run_raises():
    with pytest.raises(RuntimeError, match="not supported"):
        TinyModule().log("x", 1.0)


@pytest.mark.parametrize("kwargs,value,exc,match", [
    ({"on_step": False, "on_epoch": False}, 1.0, ValueError, "both False"),
    ({"reduce_fx": "median"}, 1.0, ValueError, "reduce_fx"),
    ({}, torch.ones(3), ValueError, "scalar"),
    ({}, "high", TypeError, "number"),
])
def test_bad_log_calls(kwargs, value, exc, match):
    class M(TinyModule):
        def training_step(self, batch, batch_idx):
            self.log("x", value, **kwargs)
            return super().training_step(batch, batch_idx)

    with pytest.raises(exc, match=match):
        _trainer(max_epochs=1).fit(M(), make_loader(make_data(n=8)))


def test_on_step_in_epoch_hook_raises():
    class M(TinyModule):
        def on_train_epoch_end(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(ValueError, match="on_step=True"):
        _trainer(max_epochs=1).fit(M(), make_loader(make_data(n=8)))


def test_epoch_hook_logging_defaults_to_epoch():
    class M(TinyModule):
        def on_train_epoch_end(self):
            self.log("epoch_thing", 3.0)

    t = _trainer(max_epochs=1)
    t.fit(M(), make_loader(make_data(n=8)))
    assert t.callback_metrics["epoch_thing"].item() == 3.0


def test_test_returns_floats_per_loader():
    m = TinyModule()
    dl = make_loader(make_data(n=16), shuffle=False)
    out = _trainer().test(m, [dl, dl])
    assert len(out) == 2
    assert set(out[0]) == {"test_acc/dataloader_idx_0"}
    assert out[0]["test_acc/dataloader_idx_0"] == out[1]["test_acc/dataloader_idx_1"]


def test_results_weighted_mean_across_folds_and_state_round_trip():
    from trainer.results import FOLD_EVERY, Results

    g = torch.Generator().manual_seed(0)
    n = 2 * FOLD_EVERY + 37
    values = torch.rand(n, generator=g)
    sizes = [int(s) for s in torch.randint(1, 9, (n,), generator=g)]

    def feed(res, lo, hi):
        for i in range(lo, hi):
            res.log("v", values[i], None, True, False, True, "mean", False, sizes[i])

    a = Results("train")
    a.fx = "train_batch"
    feed(a, 0, n)
    expected = (values.double() * torch.tensor(sizes, dtype=torch.float64)).sum() / sum(sizes)
    got = a.epoch_values()["v_epoch"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)

    b = Results("train")
    b.fx = "train_batch"
    feed(b, 0, FOLD_EVERY + 5)  # stop with values pending
    state = b.state_dict()
    c = Results("train")
    c.load_state_dict(state)
    c.fx = "train_batch"
    feed(c, FOLD_EVERY + 5, n)
    assert torch.equal(c.epoch_values()["v_epoch"], got)  # bit for bit, as uninterrupted


def test_validation_and_test_on_step_values_reach_the_loggers():
    """Lightning's convention: ``val_x_step`` after each validation batch (not in the sanity
    check), its step counting validation batches across epochs; likewise for test."""

    class StepEval(TinyModule):
        def validation_step(self, batch, batch_idx):
            self.log("val_x", float(batch_idx), on_step=True, on_epoch=True)

        def test_step(self, batch, batch_idx):
            self.log("test_x", float(batch_idx) + 10, on_step=True, on_epoch=True)

    ds = make_data(n=24)
    lg = ListLogger()
    t = Trainer(max_epochs=2, logger=lg, enable_checkpointing=False, enable_progress_bar=False,
                num_sanity_val_steps=2, log_every_n_steps=100)
    m = StepEval()
    t.fit(m, make_loader(ds, batch_size=8), make_loader(ds, batch_size=8, shuffle=False))
    val_steps = [(step, row["val_x_step"]) for step, row in lg.rows if "val_x_step" in row]
    # 3 batches per validation, 2 epochs, no sanity-check rows: steps 0..5, values 0,1,2,0,1,2
    assert val_steps == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 0.0), (4, 1.0), (5, 2.0)]
    epoch_rows = [row for _, row in lg.rows if "val_x_epoch" in row]
    assert [r["val_x_epoch"] for r in epoch_rows] == [pytest.approx(1.0)] * 2
    lg.rows.clear()
    t.test(m, make_loader(ds, batch_size=8, shuffle=False))
    test_steps = [(step, row["test_x_step"]) for step, row in lg.rows if "test_x_step" in row]
    assert test_steps == [(0, 10.0), (1, 11.0), (2, 12.0)]
    assert t.logged_metrics["test_x_step"] == 12.0


def test_validation_step_log_count_resumes_from_a_checkpoint(tmp_path):
    """After a resume, val_x_step goes on from the checkpoint's count (no repeated steps)."""

    class StepEval(TinyModule):
        def validation_step(self, batch, batch_idx):
            self.log("val_x", float(batch_idx), on_step=True)

    ds = make_data(n=16)

    def fit(max_epochs, ckpt=None):
        lg = ListLogger()
        t = Trainer(max_epochs=max_epochs, logger=lg, enable_checkpointing=False,
                    enable_progress_bar=False, num_sanity_val_steps=0, log_every_n_steps=100)
        t.fit(StepEval(), make_loader(ds, batch_size=8),
              make_loader(ds, batch_size=8, shuffle=False), ckpt_path=ckpt)
        return t, [step for step, row in lg.rows if "val_x_step" in row]

    t, steps = fit(1)
    assert steps == [0, 1]
    t.save_checkpoint(tmp_path / "e1.ckpt")
    _, steps = fit(2, tmp_path / "e1.ckpt")
    assert steps == [2, 3]
