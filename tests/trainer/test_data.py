"""Batches to the device, DataModules, loaders from the module, pickling, predict."""

from __future__ import annotations

import pickle
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from core_helpers import TinyModule, make_data, make_loader

from trainer import DataModule, Trainer
from trainer.loops import move_to_device

Pair = namedtuple("Pair", "x y")


@dataclass
class Batch:
    x: torch.Tensor
    meta: str


def test_move_to_device_walks_structures():
    meta = torch.device("meta")
    batch = {"a": (torch.ones(2), [torch.zeros(1), "s"]), "p": Pair(torch.ones(1), 3),
             "d": Batch(torch.ones(3), "m")}
    out = move_to_device(batch, meta)
    assert out["a"][0].device == meta and out["a"][1][0].device == meta and out["a"][1][1] == "s"
    assert isinstance(out["p"], Pair) and out["p"].x.device == meta and out["p"].y == 3
    assert isinstance(out["d"], Batch) and out["d"].x.device == meta and out["d"].meta == "m"
    assert batch["a"][0].device.type == "cpu"  # the input is left as it was


def test_custom_transfer_batch_to_device_is_used():
    seen = []

    class M(TinyModule):
        def transfer_batch_to_device(self, batch, device, dataloader_idx=0):
            seen.append(device.type)
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

    Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False).fit(M(), make_loader(make_data(n=16)))
    assert seen == ["cpu", "cpu"]


class DM(DataModule):
    def __init__(self):
        super().__init__()
        self.calls = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        self.ds = make_data(n=24)

    def train_dataloader(self):
        self.calls.append("train_dataloader")
        return make_loader(self.ds)

    def val_dataloader(self):
        self.calls.append("val_dataloader")
        return make_loader(self.ds, shuffle=False)

    def test_dataloader(self):
        return make_loader(self.ds, shuffle=False)

    def predict_dataloader(self):
        return make_loader(self.ds, shuffle=False)

    def teardown(self, stage):
        self.calls.append(f"teardown:{stage}")


def _t(**kw):
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   num_sanity_val_steps=0, **kw)


def test_datamodule_fit_test_predict():
    dm = DM()
    m = TinyModule()
    t = _t(max_epochs=1)
    t.fit(m, datamodule=dm)
    assert dm.calls == ["prepare_data", "setup:fit", "train_dataloader", "val_dataloader",
                        "teardown:fit"]
    assert "val_loss" in t.callback_metrics
    res = t.test(m, datamodule=dm)
    assert set(res[0]) == {"test_acc"}
    preds = t.predict(m, datamodule=dm)
    assert len(preds) == 3 and preds[0].shape == (8, 3)
    assert t.validate(m, datamodule=dm)[0]["val_loss"] > 0


def test_datamodule_and_loaders_together_is_an_error():
    with pytest.raises(ValueError, match="either datamodule or dataloaders"):
        _t().fit(TinyModule(), make_loader(make_data()), datamodule=DM())


def test_loaders_from_the_module():
    class M(TinyModule):
        def train_dataloader(self):
            return make_loader(make_data(n=16))

    t = _t(max_epochs=1)
    t.fit(M())
    assert t.global_step == 2


def test_missing_data_and_steps_are_clear_errors():
    with pytest.raises(ValueError, match="no training data"):
        _t().fit(TinyModule())
    with pytest.raises(ValueError, match="validation_step is not written"):
        class NoVal(TinyModule):
            validation_step = TinyModule.__mro__[1].validation_step
        _t(max_epochs=1).fit(NoVal(), make_loader(make_data()), make_loader(make_data()))
    with pytest.raises(TypeError, match="must be a trainer.TrainModule"):
        _t().fit(torch.nn.Linear(1, 1), make_loader(make_data()))


def test_trainer_and_module_pickle_before_and_after_fit():
    m = TinyModule()
    t = _t(max_epochs=1)
    pickle.loads(pickle.dumps((t, m, DM())))
    t.fit(m, make_loader(make_data(n=16)))
    t2, m2 = pickle.loads(pickle.dumps((t, m)))
    assert t2.global_step == 2 and torch.equal(m2.net[0].weight, m.net[0].weight)


def test_predict_multiple_loaders_and_dataloader_idx():
    class M(TinyModule):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return dataloader_idx

    dl = make_loader(make_data(n=16), shuffle=False)
    out = _t().predict(M(), [dl, dl])
    assert out == [[0, 0], [1, 1]]


def test_validate_after_fit_uses_the_fitted_module():
    m = TinyModule()
    t = _t(max_epochs=1)
    dl = make_loader(make_data(n=16), shuffle=False)
    t.fit(m, dl)
    assert t.validate(dataloaders=dl)[0]["val_loss"] > 0


def test_iterable_without_length_steps_the_last_window():
    def batches():
        ds = make_data(n=40)
        for i in range(0, 40, 8):
            yield ds.tensors[0][i:i + 8], ds.tensors[1][i:i + 8]

    class Gen:
        def __iter__(self):
            return batches()

    t = _t(max_epochs=1, accumulate_grad_batches=2)
    t.fit(TinyModule(), Gen())
    assert t.global_step == 3  # windows of 2, 2 and the tail 1
