"""Checkpoint files (atomic, safe loading, clear errors), hyperparameters, in-process resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from core_helpers import TinyModule, flat, make_data, make_loader

from trainer import CheckpointError, Trainer, TrainModule
from trainer.callbacks import Callback
from trainer.checkpoint import (
    collect_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)


def test_atomic_save_leaves_no_temp_and_overwrites(tmp_path):
    p = tmp_path / "sub" / "a.ckpt"
    save_checkpoint({"state_dict": {"w": torch.ones(2)}}, p)
    save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, p)
    assert [q.name for q in p.parent.iterdir()] == ["a.ckpt"]
    assert torch.equal(load_checkpoint(p)["state_dict"]["w"], torch.zeros(2))


def test_failed_save_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.ckpt"
    save_checkpoint({"state_dict": {"w": torch.ones(2)}}, p)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        save_checkpoint({"state_dict": {}, "bad": lambda: 0}, p)
    assert torch.equal(load_checkpoint(p)["state_dict"]["w"], torch.ones(2))
    assert [q.name for q in tmp_path.iterdir()] == ["a.ckpt"]


class Foreign:
    pass


def test_bad_files_name_the_path(tmp_path):
    good = tmp_path / "good.ckpt"
    save_checkpoint({"state_dict": {"w": torch.ones(100)}}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "obj": Foreign()}, foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    no_state = tmp_path / "nostate.ckpt"
    torch.save({"weights": torch.ones(1)}, no_state)
    for p in (truncated, foreign, garbage, no_state, tmp_path / "missing.ckpt"):
        with pytest.raises(CheckpointError, match=str(p)):
            load_checkpoint(p)


def test_rng_states_round_trip_through_a_file(tmp_path):
    states = collect_rng_states()
    save_checkpoint({"state_dict": {}, "rng": states}, tmp_path / "r.ckpt")
    a = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_states(load_checkpoint(tmp_path / "r.ckpt")["rng"])
    b = (random.random(), np.random.rand(), torch.rand(1))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _t(**kw):
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   num_sanity_val_steps=0, **kw)


def test_save_hyperparameters_and_load_from_checkpoint(tmp_path):
    m = TinyModule(hidden=12, lr=0.05)
    assert dict(m.hparams) == {"d_in": 8, "hidden": 12, "n_cls": 3, "lr": 0.05,
                               "dropout": 0.1, "seed": 0}
    t = _t(max_epochs=1)
    t.fit(m, make_loader(make_data(n=16)))
    t.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = load_checkpoint(tmp_path / "m.ckpt")
    assert ckpt["module_class"] == "core_helpers:TinyModule"
    assert {"epoch", "global_step", "trainflow_version", "hyper_parameters"} <= set(ckpt)
    m2 = TinyModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert torch.equal(flat(m), flat(m2)) and m2.hparams.hidden == 12
    m3 = TrainModule.load_from_checkpoint(tmp_path / "m.ckpt", dropout=0.5)  # via module_class
    assert type(m3).__name__ == "TinyModule" and m3.hparams.dropout == 0.5
    assert torch.equal(flat(m), flat(m3))


def test_save_hyperparameters_rejects_non_data_with_a_hint():
    class M(TrainModule):
        def __init__(self, net, width=3):
            super().__init__()
            self.save_hyperparameters()

    with pytest.raises(TypeError, match=r"ignore=\['net'\]"):
        M(torch.nn.Linear(1, 1))

    class N(TrainModule):
        def __init__(self, net, width=3, **extra):
            super().__init__()
            self.save_hyperparameters(ignore="net")

    assert dict(N(torch.nn.Linear(1, 1), extra_flag=True).hparams) == {"width": 3,
                                                                       "extra_flag": True}


def test_load_from_checkpoint_missing_args_is_clear(tmp_path):
    class NoHp(TrainModule):
        def __init__(self, width):
            super().__init__()
            self.lin = torch.nn.Linear(width, 1)

    save_checkpoint({"state_dict": NoHp(2).state_dict(), "hyper_parameters": {}},
                    tmp_path / "x.ckpt")
    with pytest.raises(TypeError, match="save_hyperparameters"):
        NoHp.load_from_checkpoint(tmp_path / "x.ckpt")
    assert isinstance(NoHp.load_from_checkpoint(tmp_path / "x.ckpt", width=2), NoHp)


class SaveAt(Callback):
    """Saves a checkpoint at one point of the run and stops there (an interruption)."""

    def __init__(self, path, hook, epoch, step=None):
        self.path, self.hook, self.epoch, self.step = path, hook, epoch, step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.hook == "batch" and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise KeyboardInterrupt

    def on_validation_end(self, trainer, module):
        if self.hook == "val" and trainer.global_step == self.step and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)
            raise KeyboardInterrupt

    def on_train_epoch_end(self, trainer, module):
        if self.hook == "epoch" and trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)
            raise KeyboardInterrupt


class Rich(TinyModule):
    """Adam + an epoch scheduler + dropout + validation: state everywhere."""

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)}


def _run(ckpt=None, cb=None, epochs=3, n=40):
    torch.manual_seed(0)
    ds = make_data(n=n)
    m = Rich(dropout=0.3)
    t = _t(max_epochs=epochs, callbacks=[cb] if cb else None, val_check_interval=0.5)
    try:
        t.fit(m, make_loader(ds), make_loader(ds, shuffle=False), ckpt_path=ckpt)
    except KeyboardInterrupt:
        return None, t
    return flat(m), t


@pytest.mark.parametrize("hook,epoch,step,n", [
    ("epoch", 0, None, 40), ("batch", None, 7, 40), ("batch", None, 3, 40),
    ("val", None, 7, 40),  # mid-epoch validation
    ("val", None, 12, 48),  # the validation at the end of epoch 2 (6 batches, every 3)
    # after an epoch's last batch (its epoch scheduler stepped, its loader not yet run to
    # StopIteration): 40 and 48 samples are exact multiples of the batch size
    ("batch", None, 5, 40), ("batch", None, 12, 48),
])
def test_resume_in_process_equals_uninterrupted(tmp_path, hook, epoch, step, n):
    full, t_full = _run(n=n)
    p = tmp_path / "c.ckpt"
    stopped, _ = _run(cb=SaveAt(p, hook, epoch, step), n=n)
    assert stopped is None and p.exists()
    resumed, t = _run(ckpt=p, n=n)
    assert torch.equal(full, resumed)
    assert t.global_step == t_full.global_step == 3 * (n // 8) and t.current_epoch == 3
    assert torch.equal(t.callback_metrics["val_loss"], t_full.callback_metrics["val_loss"])


def test_weights_only_checkpoint_cannot_resume(tmp_path):
    m = TinyModule()
    t = _t(max_epochs=1)
    t.fit(m, make_loader(make_data(n=16)))
    t.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    with pytest.raises(ValueError, match="weights-only"):
        _t(max_epochs=2).fit(TinyModule(), make_loader(make_data(n=16)),
                             ckpt_path=tmp_path / "w.ckpt")


def test_model_checkpoint_every_n_train_steps_resume(tmp_path):
    """The CALLBACKS helper's ModelCheckpoint saving mid-epoch feeds an exact resume."""
    from trainer.callbacks.model_checkpoint import ModelCheckpoint

    full, _ = _run()

    class Interrupt(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 8:
                raise KeyboardInterrupt

    torch.manual_seed(0)
    ds = make_data(n=40)
    t = Trainer(max_epochs=3, logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
                val_check_interval=0.5, callbacks=[
                    ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1),
                    Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        t.fit(Rich(dropout=0.3), make_loader(ds), make_loader(ds, shuffle=False))
    ckpts = sorted(tmp_path.glob("*.ckpt"), key=lambda p: load_checkpoint(p)["global_step"])
    last = ckpts[-1]
    assert load_checkpoint(last)["global_step"] == 6
    resumed, _ = _run(ckpt=last)
    assert torch.equal(full, resumed)


def test_summarize_uses_example_input_array():
    text = TinyModule().summarize(max_depth=2)
    assert "net.0" in text and "Linear" in text and "[2, 16]" in text and "[2, 3]" in text
    assert text.splitlines()[-1] == "195 trainable params, 0 non-trainable, 195 total"


@pytest.mark.parametrize("persistent", [False, True])
def test_resume_with_worker_processes(tmp_path, persistent):
    """With num_workers > 0 the consumed batches are fetched and dropped: still exact. Persistent
    workers draw a worker seed from the loader's generator at their first iter() only; the run
    resumed in epoch 1 starts new workers and must not read that epoch in another order."""

    def run(ckpt=None, cb=None):
        torch.manual_seed(0)
        ds = make_data(n=40)
        m = Rich(dropout=0.3)
        t = _t(max_epochs=2, callbacks=[cb] if cb else None)
        try:
            t.fit(m, make_loader(ds, num_workers=1, persistent_workers=persistent),
                  ckpt_path=ckpt)
        except KeyboardInterrupt:
            return None
        return flat(m)

    full = run()
    p = tmp_path / "c.ckpt"
    assert run(cb=SaveAt(p, "batch", None, 7)) is None
    assert torch.equal(full, run(ckpt=p))


def test_resume_mid_accumulation_window_equals_uninterrupted(tmp_path):
    """A checkpoint taken between the backward passes of one accumulation window keeps the
    gradients summed so far: the resumed step is the one the uninterrupted run takes."""

    class SaveMidWindow(Callback):
        def __init__(self, path=None):
            self.path = path

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            # accumulate_grad_batches=2: after batch 3 of epoch 1, one backward is pending
            if self.path and trainer.current_epoch == 1 and batch_idx == 2:
                trainer.save_checkpoint(self.path)
                raise KeyboardInterrupt

    def run(ckpt=None, cb=None):
        torch.manual_seed(0)
        ds = make_data(n=40)
        m = Rich(dropout=0.3)
        t = _t(max_epochs=3, accumulate_grad_batches=2, callbacks=[cb] if cb else None)
        try:
            t.fit(m, make_loader(ds), make_loader(ds, shuffle=False), ckpt_path=ckpt)
        except KeyboardInterrupt:
            return None
        return flat(m)

    full = run()
    p = tmp_path / "mid_window.ckpt"
    assert run(cb=SaveMidWindow(p)) is None and p.exists()
    assert torch.equal(full, run(ckpt=p))

    # taken by 2 processes, resumed by 1: the partial sums cannot be split, and it says so
    ckpt = load_checkpoint(p)
    ckpt["loops"]["fit"]["pending_grads"] *= 2
    save_checkpoint(ckpt, tmp_path / "two_ranks.ckpt")
    with pytest.warns(UserWarning, match=r"accumulation window by 2 process.*resumed by 1"):
        assert not torch.equal(full, run(ckpt=tmp_path / "two_ranks.ckpt"))
