"""Hooks per accumulation window; outputs reach *_epoch_end only when asked for. (The full
call order of every hook, against Lightning's: test_hook_order.py.)"""

from __future__ import annotations

import torch
from core_helpers import TinyModule, make_data, make_loader

from trainer import Trainer
from trainer.callbacks import HOOK_NAMES, Callback

MODULE_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_start", "on_predict_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "configure_optimizers", "training_step", "validation_step",
    "test_step", "predict_step",
]


def _recorder(name, owner, calls, original):
    def hook(*args, **kwargs):
        calls.append(f"{owner}.{name}")
        return original(*args, **kwargs)
    return hook


class RecordingModule(TinyModule):
    pass


def _make_recording_module(calls):
    attrs = {}
    for name in MODULE_HOOKS:
        attrs[name] = _recorder(name, "module", calls, getattr(TinyModule, name))
    cls = type("Rec", (TinyModule,), attrs)
    return cls()


def _make_recording_callback(calls):
    attrs = {name: _recorder(name, "cb", calls, getattr(Callback, name)) for name in HOOK_NAMES}
    return type("RecCb", (Callback,), attrs)()


def _trainer(calls, **kw):
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   callbacks=[_make_recording_callback(calls)], **kw)


def test_accumulation_hooks_fire_per_window():
    calls: list[str] = []
    module = _make_recording_module(calls)
    trainer = _trainer(calls, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(module, make_loader(make_data(n=24), batch_size=8))  # 3 batches: windows 2 + 1
    assert calls.count("module.training_step") == 3
    assert calls.count("module.on_before_zero_grad") == 2
    assert calls.count("module.on_before_optimizer_step") == 2
    assert trainer.global_step == 2


class OutputsModule(TinyModule):
    def __init__(self):
        super().__init__()
        self.seen = {}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return {"loss": loss, "idx": batch_idx}

    def training_step_end(self, out):
        out["ended"] = True
        return out

    def training_epoch_end(self, outputs):
        self.seen["train"] = outputs

    def validation_epoch_end(self, outputs):
        self.seen["val"] = outputs

    def test_step_end(self, out):
        return 2 * out

    def test_step(self, batch, batch_idx):
        return torch.tensor(float(batch_idx))

    def test_epoch_end(self, outputs):
        self.seen["test"] = outputs


def test_outputs_reach_epoch_end_when_asked():
    m = OutputsModule()
    ds = make_data(n=24)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(m, make_loader(ds), make_loader(ds, shuffle=False))
    train = m.seen["train"]
    assert [o["idx"] for o in train] == [0, 1, 2] and all(o["ended"] for o in train)
    assert not train[0]["loss"].requires_grad  # kept without the graph
    assert len(m.seen["val"]) == 3
    trainer.test(m, make_loader(ds, shuffle=False))
    assert [float(t) for t in m.seen["test"]] == [0.0, 2.0, 4.0]


def test_outputs_not_kept_without_epoch_end(monkeypatch):
    kept = []
    import trainer.loops as loops

    orig = loops.detach_output
    monkeypatch.setattr(loops, "detach_output", lambda o: kept.append(o) or orig(o))
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False).fit(TinyModule(), make_loader(make_data(n=24)))
    assert kept == []


def test_on_train_batch_start_minus_one_ends_epoch():
    class Stop(TinyModule):
        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 1 else None

    t = Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                enable_progress_bar=False)
    t.fit(Stop(), make_loader(make_data(n=32)))
    assert t.global_step == 2  # one batch per epoch, two epochs
