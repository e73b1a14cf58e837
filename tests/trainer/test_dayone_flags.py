"""Trainer flags: max_time, detect_anomaly, benchmark, sync_batchnorm,
reload_dataloaders_every_n_epochs."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import Trainer
from trainer.callbacks import Timer
from trainer.callbacks import timer as timer_mod

QUIET = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False,
             enable_model_summary=False)


# ------------------------------------------------------------------ max_time
@pytest.mark.parametrize("value, expected", [
    ("00:00:01:30", timedelta(minutes=1, seconds=30)),
    ({"hours": 2}, timedelta(hours=2)),
    (timedelta(seconds=5), timedelta(seconds=5)),
])
def test_max_time_forms(value, expected):
    t = Trainer(max_time=value, **QUIET)
    timers = [c for c in t.callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0].duration == expected
    assert t.max_epochs == math.inf  # max_time alone bounds the fit, as in Lightning


@pytest.mark.parametrize("bad", ["1:30", {"fortnights": 1}, 30, "00:00:00:00"])
def test_bad_max_time_names_the_flag(bad):
    with pytest.raises(ValueError, match=r"Trainer\(max_time=...\)"):
        Trainer(max_time=bad, **QUIET)


def test_max_time_and_a_timer_callback_is_refused():
    with pytest.raises(ValueError, match="already hold a Timer"):
        Trainer(max_time="00:00:01:00", callbacks=[Timer({"minutes": 1})], **QUIET)


def test_max_time_stops_fit_when_the_budget_is_spent(monkeypatch, capsys):
    clock = {"now": 100.0}
    monkeypatch.setattr(timer_mod.time, "monotonic", lambda: clock["now"])

    class OneSecondSteps(TinyModule):  # each training step "takes" one second on the clock
        def training_step(self, batch, batch_idx):
            clock["now"] += 1.0
            return super().training_step(batch, batch_idx)

    t = Trainer(max_time={"seconds": 3}, **QUIET)
    t.fit(OneSecondSteps(), make_loader(make_data(64)))  # 8 batches per epoch
    assert t.global_step == 3  # of 8 batches in the first epoch
    assert "time budget of 0:00:03 is spent" in capsys.readouterr().err
    timer = next(c for c in t.callbacks if isinstance(c, Timer))
    assert timer.state_dict() == {"time_elapsed": {"train": 3.0}}


# ------------------------------------------------------------------ detect_anomaly
class NanGrad(TinyModule):
    """A finite loss whose backward makes NaN (0 * inf)."""

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return (self(x) * 0).sqrt().sum()


def test_detect_anomaly_names_the_op_that_made_nan():
    dl = make_loader(make_data(16))
    m = NanGrad()
    Trainer(max_steps=1, **QUIET).fit(m, dl)  # off: the NaN goes by unnoticed
    assert not torch.isfinite(m.net[0].weight).all()
    with pytest.raises(RuntimeError, match="returned nan values"):
        Trainer(max_steps=1, detect_anomaly=True, **QUIET).fit(NanGrad(), dl)
    assert not torch.is_anomaly_enabled()


# ------------------------------------------------------------------ benchmark
@pytest.mark.parametrize("flags, inside", [
    (dict(benchmark=True), True),
    (dict(benchmark=False), False),
    (dict(deterministic=True), False),
])
def test_benchmark_sets_cudnn_during_the_stage(flags, inside):
    seen = {}

    class Peek(TinyModule):
        def on_fit_start(self):
            seen["benchmark"] = torch.backends.cudnn.benchmark

    before = torch.backends.cudnn.benchmark
    Trainer(max_epochs=1, **flags, **QUIET).fit(Peek(), make_loader(make_data(16)))
    assert seen["benchmark"] is inside
    assert torch.backends.cudnn.benchmark == before


def test_benchmark_must_be_bool_or_none():
    with pytest.raises(ValueError, match=r"Trainer\(benchmark=...\)"):
        Trainer(benchmark="fast")


# ------------------------------------------------------------------ sync_batchnorm
def test_sync_batchnorm_on_cpu_ddp_is_refused():
    with pytest.raises(ValueError, match="sync_batchnorm=True.*CUDA"):
        Trainer(sync_batchnorm=True, strategy="ddp", devices=2, accelerator="cpu")


def test_sync_batchnorm_one_process_keeps_batchnorm():
    class BN(TinyModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.BatchNorm1d(3))

    m = BN()
    Trainer(max_epochs=1, sync_batchnorm=True, **QUIET).fit(m, make_loader(make_data(16)))
    assert type(m.net[1]) is torch.nn.BatchNorm1d  # one process: SyncBatchNorm would be BN


# ------------------------------------------------------------------ reload_dataloaders
class Reloading(TinyModule):
    def __init__(self):
        super().__init__()
        self.calls = {"train": [], "val": []}

    def train_dataloader(self):
        self.calls["train"].append(self.current_epoch)
        return make_loader(make_data(16, seed=self.current_epoch))

    def val_dataloader(self):
        self.calls["val"].append(self.current_epoch)
        return make_loader(make_data(8), shuffle=False)


@pytest.mark.parametrize("every, epochs", [(0, [0]), (1, [0, 1, 2, 3, 4]), (2, [0, 2, 4])])
def test_reload_dataloaders_every_n_epochs(every, epochs):
    m = Reloading()
    Trainer(max_epochs=5, reload_dataloaders_every_n_epochs=every, num_sanity_val_steps=0,
            **QUIET).fit(m)
    assert m.calls == {"train": epochs, "val": epochs}


def test_reload_with_loaders_given_to_fit_is_refused():
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=2.*cannot be built"):
        Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=2, **QUIET).fit(
            TinyModule(), make_loader(make_data(16)))
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs"):
        Trainer(reload_dataloaders_every_n_epochs=-1)


def test_timer_resumes_the_budget_from_a_checkpoint(monkeypatch):
    clock = {"now": 50.0}
    monkeypatch.setattr(timer_mod.time, "monotonic", lambda: clock["now"])
    timer = Timer({"seconds": 10})
    timer.load_state_dict({"time_elapsed": {"train": 4.0}})  # spent before the interruption
    timer.on_train_start(None, None)
    clock["now"] += 1.0
    assert timer.time_elapsed() == 5.0 and timer.time_remaining() == 5.0
