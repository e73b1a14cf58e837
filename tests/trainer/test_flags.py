"""Each Trainer flag does what it says; bad flags fail at construction with a clear error."""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, make_data, make_loader

from trainer import Trainer


def _t(**kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("enable_progress_bar", False)
    return Trainer(**kw)


class Counting(TinyModule):
    def __init__(self):
        super().__init__()
        self.train_batches = 0
        self.val_batches: list[int] = []  # batches per validation run
        self.test_batches = 0
        self.predict_batches = 0
        self.epochs_started = 0

    def on_train_epoch_start(self):
        self.epochs_started += 1

    def training_step(self, batch, batch_idx):
        self.train_batches += 1
        return super().training_step(batch, batch_idx)

    def on_validation_start(self):
        self.val_batches.append(0)

    def validation_step(self, batch, batch_idx):
        self.val_batches[-1] += 1
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.test_batches += 1

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.predict_batches += 1
        return self(batch[0])


DS = make_data(n=80)  # 10 batches of 8


def _fit(trainer, module=None, val=True):
    module = module or Counting()
    trainer.fit(module, make_loader(DS), make_loader(DS, shuffle=False) if val else None)
    return module


def test_max_epochs():
    t = _t(max_epochs=3, num_sanity_val_steps=0)
    m = _fit(t, val=False)
    assert (t.current_epoch, t.global_step, m.train_batches) == (3, 30, 30)


def test_max_steps_stops_mid_epoch():
    t = _t(max_steps=13, num_sanity_val_steps=0)
    m = _fit(t, val=False)
    assert (t.global_step, m.train_batches, m.epochs_started) == (13, 13, 2)


def test_min_epochs_overrides_should_stop():
    class StopAsked(Counting):
        def on_train_epoch_end(self):
            self.trainer.should_stop = True

    t = _t(max_epochs=5, min_epochs=3)
    m = _fit(t, StopAsked(), val=False)
    assert m.epochs_started == 3


def test_limit_batches_int_and_fraction():
    t = _t(max_epochs=1, limit_train_batches=3, limit_val_batches=0.5, num_sanity_val_steps=0)
    m = _fit(t)
    assert m.train_batches == 3 and m.val_batches == [5]
    dl = make_loader(DS, shuffle=False)
    m = Counting()
    _t(limit_test_batches=0.2).test(m, dl)
    assert m.test_batches == 2
    _t(limit_predict_batches=4).predict(m, dl)
    assert m.predict_batches == 4


def test_limit_val_zero_disables_validation():
    m = _fit(_t(max_epochs=1, limit_val_batches=0))
    assert m.val_batches == []


def test_val_check_interval_float_and_int():
    m = _fit(_t(max_epochs=1, val_check_interval=0.25, num_sanity_val_steps=0,
                limit_val_batches=1))
    assert len(m.val_batches) == 5  # every 2 batches of 10
    m = _fit(_t(max_epochs=1, val_check_interval=3, num_sanity_val_steps=0,
                limit_val_batches=1))
    assert len(m.val_batches) == 3  # after batches 3, 6, 9


def test_val_check_interval_counted_across_epochs():
    # check_val_every_n_epoch=None: every 4 training batches of all epochs (Lightning's
    # step-based validation): after batches 4, 8 | 12, 16, 20 of two 10-batch epochs
    m = _fit(_t(max_epochs=2, val_check_interval=4, check_val_every_n_epoch=None,
                num_sanity_val_steps=0, limit_val_batches=1))
    assert len(m.val_batches) == 5


def test_val_check_interval_across_epochs_goes_on_counting_after_resume(tmp_path):
    ckpt = tmp_path / "one_epoch.ckpt"
    flags = dict(val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                 limit_val_batches=1)
    t = _t(max_epochs=1, **flags)
    assert len(_fit(t).val_batches) == 3  # after batches 3, 6, 9
    t.save_checkpoint(ckpt)
    resumed = Counting()
    _t(max_epochs=3, **flags).fit(resumed, make_loader(DS), make_loader(DS, shuffle=False),
                                  ckpt_path=ckpt)
    # batches 11..30: after 12, 15, 18, 21, 24, 27, 30 (counting from 0 again would give 6)
    assert len(resumed.val_batches) == 7


def test_int_val_check_interval_longer_than_an_epoch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"val_check_interval=11.*10 training batches.*"
                                         r"check_val_every_n_epoch=None"):
        _fit(_t(max_epochs=1, val_check_interval=11, num_sanity_val_steps=0))


def test_check_val_every_n_epoch():
    m = _fit(_t(max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0,
                limit_val_batches=1))
    assert len(m.val_batches) == 2


def test_num_sanity_val_steps():
    m = _fit(_t(max_epochs=1, num_sanity_val_steps=2))
    assert m.val_batches[0] == 2 and len(m.val_batches) == 2
    m = _fit(_t(max_epochs=1, num_sanity_val_steps=0))
    assert len(m.val_batches) == 1
    m = _fit(_t(max_epochs=1, num_sanity_val_steps=-1, limit_val_batches=3))
    assert m.val_batches[0] == 3


def test_sanity_check_logs_are_discarded():
    m = Counting()
    t = _t(max_epochs=1, num_sanity_val_steps=2, limit_train_batches=0)
    _fit(t, m)  # no training batches: only the sanity pass runs validation_step
    assert m.val_batches == [2] and t.sanity_checking is False
    assert "val_loss" not in t.callback_metrics


def test_fast_dev_run():
    t = _t(fast_dev_run=True, logger=True, enable_checkpointing=True)
    m = _fit(t)
    assert (m.train_batches, m.val_batches, t.global_step) == (1, [1], 1)
    assert t.loggers == [] and t.checkpoint_callback is None
    t = _t(fast_dev_run=3)
    m = _fit(t)
    assert m.train_batches == 3


def test_overfit_batches_uses_the_same_first_batches():
    seen = []

    class Seen(Counting):
        def training_step(self, batch, batch_idx):
            seen.append(batch[1].tolist())
            return super().training_step(batch, batch_idx)

    t = _t(max_epochs=2, overfit_batches=2, num_sanity_val_steps=0)
    m = _fit(t, Seen())
    assert m.train_batches == 4 and m.val_batches == [2, 2]
    assert seen[:2] == seen[2:]  # no shuffling
    assert seen[0] == DS.tensors[1][:8].tolist()


def test_deterministic_sets_and_restores():
    before = torch.are_deterministic_algorithms_enabled()
    seen = []

    class D(Counting):
        def on_train_start(self):
            seen.append(torch.are_deterministic_algorithms_enabled())

    _fit(_t(max_epochs=1, deterministic=True), D(), val=False)
    assert seen == [True]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_accelerator_and_devices_cpu():
    t = _t(accelerator="cpu", devices=1, max_epochs=1)
    m = _fit(t, val=False)
    assert t.strategy.root_device.type == "cpu" and m.device.type == "cpu"


def test_precision_bf16_mixed_on_cpu():
    dtypes = []

    class P(Counting):
        def training_step(self, batch, batch_idx):
            out = self(batch[0])
            dtypes.append(out.dtype)
            return torch.nn.functional.cross_entropy(out.float(), batch[1])

    t = _t(precision="bf16-mixed", max_epochs=1)
    m = _fit(t, P(), val=False)
    assert dtypes[0] == torch.bfloat16
    assert next(m.parameters()).dtype == torch.float32


def test_enable_progress_bar_and_checkpointing_add_callbacks(tmp_path):
    t = Trainer(default_root_dir=tmp_path, logger=False)
    names = {type(c).__name__ for c in t.callbacks}
    assert {"ProgressBar", "ModelCheckpoint"} <= names
    t = _t()
    assert t.callbacks == []


def test_default_root_dir_and_default_logger(tmp_path):
    t = Trainer(default_root_dir=tmp_path, enable_progress_bar=False, max_epochs=1,
                num_sanity_val_steps=0)
    assert t.default_root_dir == str(tmp_path)
    _fit(t)  # validation logs val_loss
    assert type(t.logger).__name__ == "CSVLogger"
    assert any(p.suffix == ".csv" for p in tmp_path.rglob("*"))
    assert any(p.suffix == ".ckpt" for p in tmp_path.rglob("*"))


def test_callbacks_flag_single_and_list():
    from trainer.callbacks import Callback

    class C(Callback):
        pass

    c = C()
    assert _t(callbacks=c).callbacks == [c]
    assert _t(callbacks=[c]).callbacks == [c]


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"max_epoch": 3}, TypeError, r"unknown flag.*'max_epoch'.*did you mean 'max_epochs'"),
    ({"max_epochs": -2}, ValueError, r"max_epochs"),
    ({"max_epochs": 1.5}, ValueError, r"max_epochs"),
    ({"min_epochs": -1}, ValueError, r"min_epochs"),
    ({"max_steps": -5}, ValueError, r"max_steps"),
    ({"accumulate_grad_batches": 0}, ValueError, r"accumulate_grad_batches"),
    ({"gradient_clip_val": -1.0}, ValueError, r"gradient_clip_val"),
    ({"gradient_clip_algorithm": "l2"}, ValueError, r"'norm' or 'value'"),
    ({"precision": "8-true"}, ValueError, r"precision"),
    ({"precision": "16-mixed"}, ValueError, r"16-mixed.*CUDA"),
    ({"accelerator": "tpu"}, ValueError, r"accelerator"),
    ({"devices": 0}, ValueError, r"devices"),
    ({"limit_train_batches": 1.5}, ValueError, r"limit_train_batches"),
    ({"limit_val_batches": -1}, ValueError, r"limit_val_batches"),
    ({"limit_test_batches": "all"}, ValueError, r"limit_test_batches"),
    ({"limit_predict_batches": True}, ValueError, r"limit_predict_batches"),
    ({"overfit_batches": 2.0}, ValueError, r"overfit_batches"),
    ({"val_check_interval": 0.0}, ValueError, r"val_check_interval"),
    ({"val_check_interval": 0}, ValueError, r"val_check_interval"),
    ({"check_val_every_n_epoch": 0}, ValueError, r"check_val_every_n_epoch"),
    ({"check_val_every_n_epoch": None, "val_check_interval": 0.5}, ValueError,
     r"check_val_every_n_epoch=None.*must be an int"),
    ({"num_sanity_val_steps": -2}, ValueError, r"num_sanity_val_steps"),
    ({"fast_dev_run": -1}, ValueError, r"fast_dev_run"),
    ({"log_every_n_steps": 0}, ValueError, r"log_every_n_steps"),
    ({"enable_checkpointing": "yes"}, ValueError, r"enable_checkpointing"),
    ({"enable_progress_bar": 1}, ValueError, r"enable_progress_bar"),
    ({"deterministic": None}, ValueError, r"deterministic"),
    ({"on_nonfinite_loss": "warn"}, ValueError, r"on_nonfinite_loss"),
    ({"callbacks": [object()]}, TypeError, r"callbacks"),
    ({"logger": "mlflow"}, TypeError, r"logger"),
    ({"num_nodes": 0}, ValueError, r"num_nodes"),
])
def test_bad_flags_fail_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Trainer(**kwargs)
