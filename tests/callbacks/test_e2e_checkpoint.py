"""ModelCheckpoint with the real Trainer."""

import os

import pytest
import torch

pytest.importorskip("trainer.trainer")

from e2e_helpers import Scripted, loaders  # noqa: E402

from trainer import Trainer  # noqa: E402
from trainer.callbacks import ModelCheckpoint  # noqa: E402
from trainer.checkpoint import load_checkpoint  # noqa: E402


def trainer(tmp_path, callbacks, **kw):
    kw.setdefault("max_epochs", 5)
    return Trainer(callbacks=callbacks, default_root_dir=tmp_path, enable_progress_bar=False,
                   logger=False, num_sanity_val_steps=0, **kw)


def test_top_k_filename_template_and_best_path(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}-{val_loss:.2f}",
                         monitor="val_loss", save_top_k=2)
    train, val = loaders()
    trainer(tmp_path, [mc]).fit(Scripted([0.9, 0.5, 0.7, 0.3, 0.6]), train, val)
    assert sorted(os.listdir(tmp_path / "ck")) == [
        "epoch=1-val_loss=0.50.ckpt", "epoch=3-val_loss=0.30.ckpt"]
    assert mc.best_model_path == str(tmp_path / "ck" / "epoch=3-val_loss=0.30.ckpt")
    assert float(mc.best_model_score) == pytest.approx(0.3)
    ckpt = load_checkpoint(mc.best_model_path)
    assert ckpt["epoch"] == 3 and ckpt["global_step"] == 32  # 8 batches per epoch
    state = ckpt["callbacks"][mc.state_key]
    assert state["best_model_path"] == mc.best_model_path


def test_mode_max_keeps_the_highest(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="val_loss", mode="max")
    train, val = loaders()
    trainer(tmp_path, [mc], max_epochs=3).fit(Scripted([0.1, 0.9, 0.5]), train, val)
    assert os.listdir(tmp_path) == ["epoch=1.ckpt"]


def test_every_n_train_steps_with_save_last_and_resume_from_last(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1,
                         save_last=True)
    train, _ = loaders()  # 8 batches per epoch, no validation
    trainer(tmp_path, [mc], max_epochs=2).fit(Scripted(), train)
    names = sorted(os.listdir(tmp_path / "ck"))
    assert names == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=1-step=12.ckpt",
                     "epoch=1-step=15.ckpt", "epoch=1-step=9.ckpt", "last.ckpt"]
    last = load_checkpoint(tmp_path / "ck" / "last.ckpt")
    assert last["global_step"] == 15  # written at the last trigger, mid-epoch
    assert last["loops"]["fit"]["batches_consumed"] == 7

    # resume from the mid-epoch last.ckpt: the run finishes epoch 1 and the callback goes on
    mc2 = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1,
                          save_last=True)
    t2 = trainer(tmp_path, [mc2], max_epochs=3)
    t2.fit(Scripted(), train, ckpt_path=mc.last_model_path)
    assert t2.global_step == 24
    assert set(mc.best_k_models) <= set(mc2.best_k_models)
    assert "epoch=2-step=24.ckpt" in os.listdir(tmp_path / "ck")
    assert load_checkpoint(tmp_path / "ck" / "last.ckpt")["global_step"] == 24


def test_epoch_saves_without_validation_and_every_n_epochs(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=2, save_top_k=-1, save_last=True)
    train, _ = loaders()
    trainer(tmp_path, [mc], max_epochs=4).fit(Scripted(), train)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch=1-step=16.ckpt", "epoch=3-step=32.ckpt", "last.ckpt"]


def test_default_checkpoint_goes_under_the_logger_version(tmp_path):
    train, val = loaders()
    t = Trainer(max_epochs=2, default_root_dir=tmp_path, enable_progress_bar=False,
                num_sanity_val_steps=0)
    t.fit(Scripted(), train, val)
    ck = tmp_path / "trainflow_logs" / "version_0" / "checkpoints"
    assert os.listdir(ck) == ["epoch=1-step=16.ckpt"]
    assert t.checkpoint_callback.best_model_path == str(ck / "epoch=1-step=16.ckpt")


def test_missing_monitor_key_fails_fit_with_a_clear_error(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")
    train, val = loaders()
    with pytest.raises(KeyError, match=r"val_acc.*val_loss"):
        trainer(tmp_path, [mc], max_epochs=1).fit(Scripted([1.0]), train, val)


def test_weights_of_the_best_checkpoint_are_the_weights_at_that_epoch(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")

    class Spy(Scripted):
        snaps = {}

        def on_validation_end(self):
            self.snaps[self.current_epoch] = self.layer.weight.detach().clone()

    train, val = loaders()
    trainer(tmp_path, [mc], max_epochs=3).fit(Spy([0.5, 0.1, 0.4]), train, val)
    ckpt = load_checkpoint(mc.best_model_path)
    assert torch.equal(ckpt["state_dict"]["layer.weight"], Spy.snaps[1])


def test_a_mid_epoch_step_checkpoint_resumes_to_the_same_weights(tmp_path):
    def run(ckpt_path=None, dirpath="a"):
        mc = ModelCheckpoint(dirpath=tmp_path / dirpath, every_n_train_steps=3, save_top_k=-1,
                             save_last=True)
        train, _ = loaders()
        module = Scripted(lr=0.01)
        t = trainer(tmp_path, [mc], max_epochs=2)
        t.fit(module, train, ckpt_path=ckpt_path)
        return module, t

    full, t_full = run()
    mid = tmp_path / "a" / "epoch=1-step=12.ckpt"  # 4 of epoch 1's 8 batches consumed
    resumed, t_res = run(ckpt_path=mid, dirpath="a")
    assert t_res.global_step == t_full.global_step == 16
    assert torch.equal(full.layer.weight, resumed.layer.weight)
    assert torch.equal(full.layer.bias, resumed.layer.bias)


def test_max_steps_inside_an_epoch_still_leaves_a_checkpoint(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    train, val = loaders()  # 8 batches per epoch, validation at each epoch's end
    trainer(tmp_path, [mc], max_steps=13).fit(Scripted([1.0, 0.5]), train, val)
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch=1-step=13.ckpt", "last.ckpt"]


def test_a_monitored_metric_not_yet_logged_when_the_run_ends_warns(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss")
    train, val = loaders()
    with pytest.warns(UserWarning, match="val_loss"):
        trainer(tmp_path, [mc], max_steps=5).fit(Scripted([1.0]), train, val)
    assert not (tmp_path / "ck").exists()
