"""ckpt_path='last' / 'best' from a fresh Trainer in the same default_root_dir."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from tests.trainer.core_helpers import TinyModule, flat, make_data, make_loader
from trainer import ModelCheckpoint, Trainer
from trainer.checkpoint import load_checkpoint


def _fit(root, logger=True, epochs=3):
    ds = make_data(32)
    ckpt = ModelCheckpoint(monitor="val_loss", save_last=True)
    t = Trainer(max_epochs=epochs, default_root_dir=root, logger=logger, callbacks=[ckpt],
                enable_progress_bar=False, enable_model_summary=False)
    m = TinyModule(lr=0.5)  # a large step: val_loss moves, so "best" is one of the epochs
    t.fit(m, make_loader(ds), make_loader(ds, shuffle=False))
    return ckpt, m


def _fresh(root, **kw) -> Trainer:
    kw.setdefault("logger", True)
    return Trainer(default_root_dir=root, callbacks=[ModelCheckpoint(monitor="val_loss",
                                                                     save_last=True)],
                   enable_progress_bar=False, enable_model_summary=False, **kw)


@pytest.mark.parametrize("logger", [True, False])
def test_fresh_trainer_finds_last_and_best(tmp_path, logger):
    ckpt, _ = _fit(tmp_path, logger=logger)
    assert os.path.basename(ckpt.last_model_path) == "last.ckpt"
    assert ckpt.best_model_path != ckpt.last_model_path

    ds = make_data(32)
    dl = make_loader(ds, shuffle=False)
    seen = {}

    class Peek(TinyModule):
        def on_test_start(self):
            seen["weights"] = flat(self).clone()

        on_validation_start = on_test_start

    _fresh(tmp_path, logger=logger).test(Peek(), dl, ckpt_path="best", verbose=False)
    best = load_checkpoint(ckpt.best_model_path)["state_dict"]
    assert torch.equal(seen["weights"], torch.cat([v.reshape(-1) for v in best.values()]))

    t = _fresh(tmp_path, logger=logger, max_epochs=5)
    m = TinyModule(lr=0.5)
    # resumes at epoch 3 and runs 2 more (with a logger the new run's callback warns that it
    # writes into a new version folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ModelCheckpoint: the checkpoint was saved with")
        t.fit(m, make_loader(ds), make_loader(ds, shuffle=False), ckpt_path="last")
    assert t.current_epoch == 5 and t.global_step == 5 * 4

    _fresh(tmp_path, logger=logger).validate(Peek(), dl, ckpt_path="last", verbose=False)
    # the newest last.ckpt is the resumed run's (epoch 5), not the first one's
    assert torch.equal(seen["weights"], flat(m))


def test_none_saved_is_a_clear_error(tmp_path):
    dl = make_loader(make_data(16))
    with pytest.raises(ValueError, match=r"ckpt_path='last': no last.ckpt in .*save_last=True"):
        _fresh(tmp_path).fit(TinyModule(), dl, ckpt_path="last")
    with pytest.raises(ValueError, match="ckpt_path='best': no best checkpoint"):
        _fresh(tmp_path).test(TinyModule(), dl, ckpt_path="best")
    t = Trainer(default_root_dir=tmp_path, enable_checkpointing=False, logger=False)
    with pytest.raises(ValueError, match="no ModelCheckpoint"):
        t.test(TinyModule(), dl, ckpt_path="last")
