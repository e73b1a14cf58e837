"""ModelCheckpoint logic against the stub trainer (file names, top-k, state, errors)."""

import os
import pickle

import pytest
import torch

from trainer.callbacks import ModelCheckpoint
from trainer.checkpoint import load_checkpoint
from trainer.loggers import CSVLogger, Logger


def epochs(mc, t, values, key="val_loss"):
    mc.setup(t, None, "fit")
    for epoch, v in enumerate(values):
        t.current_epoch, t.global_step = epoch, (epoch + 1) * 5
        t.callback_metrics = {key: torch.tensor(v)}
        mc.on_validation_end(t, None)
        mc.on_train_epoch_end(t, None)


def test_filename_template_with_metric_names(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{val_loss:.3f}")
    name = mc.format_checkpoint_name({"epoch": torch.tensor(3), "val_loss": torch.tensor(0.12345)})
    assert os.path.basename(name) == "epoch=3-val_loss=0.123.ckpt"
    mc2 = ModelCheckpoint(dirpath=tmp_path, filename="m-{epoch:02d}-{val/acc:.2f}",
                          auto_insert_metric_name=False)
    name2 = mc2.format_checkpoint_name({"epoch": 7, "val/acc": 0.5})
    assert os.path.basename(name2) == "m-07-0.50.ckpt"
    assert os.path.dirname(name2) == str(tmp_path)
    default = ModelCheckpoint(dirpath=tmp_path).format_checkpoint_name({"epoch": 1, "step": 20})
    assert os.path.basename(default) == "epoch=1-step=20.ckpt"


def test_top_k_keeps_the_k_best_files_and_removes_the_rest(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}-{val_loss:.2f}",
                         monitor="val_loss", save_top_k=2)
    epochs(mc, t, [0.9, 0.5, 0.7, 0.3, 0.6])
    assert sorted(os.listdir(tmp_path / "ck")) == [
        "epoch=1-val_loss=0.50.ckpt", "epoch=3-val_loss=0.30.ckpt"]
    assert os.path.basename(mc.best_model_path) == "epoch=3-val_loss=0.30.ckpt"
    assert float(mc.best_model_score) == pytest.approx(0.3)
    assert sorted(float(v) for v in mc.best_k_models.values()) == pytest.approx([0.3, 0.5])
    # saves happened for 0.9, 0.5, 0.7 (fills/improves), 0.3; not for 0.6 (worse than 0.5)
    assert len(t.saved) == 4


def test_mode_max_and_save_top_k_minus_one(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="acc", mode="max",
                         save_top_k=-1)
    epochs(mc, t, [0.1, 0.3, 0.2], key="acc")
    assert len(os.listdir(tmp_path)) == 3
    assert os.path.basename(mc.best_model_path) == "epoch=1.ckpt"


def test_no_monitor_keeps_the_latest_only_and_save_last(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    epochs(mc, t, [1.0, 1.0, 1.0])
    assert sorted(os.listdir(tmp_path)) == ["epoch=2-step=15.ckpt", "last.ckpt"]
    assert mc.last_model_path == str(tmp_path / "last.ckpt")
    assert load_checkpoint(mc.last_model_path)["global_step"] == 15


def test_every_n_train_steps_writes_last_at_each_trigger(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, save_last=True)
    mc.setup(t, None, "fit")
    for step in range(1, 10):
        t.global_step = step
        mc.on_train_batch_end(t, None, None, None, step - 1)
        if step in (3, 6, 9):
            assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == step
    mc.on_train_epoch_end(t, None)  # every_n_epochs defaults to off with step saves
    assert sorted(os.listdir(tmp_path)) == [
        "epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=9.ckpt", "last.ckpt"]
    assert t.saved.count("last.ckpt") == 3


def test_every_n_epochs(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=2, save_top_k=-1)
    epochs(mc, t, [1.0] * 5)
    assert sorted(os.listdir(tmp_path)) == ["epoch=1-step=10.ckpt", "epoch=3-step=20.ckpt"]


def test_missing_monitor_key_is_a_clear_error(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")
    mc.setup(t, None, "fit")
    t.callback_metrics = {"val_loss": torch.tensor(1.0)}
    with pytest.raises(KeyError, match=r"val_acc.*val_loss.*self\.log\('val_acc'"):
        mc.on_validation_end(t, None)


def test_step_saves_before_first_validation_skip_with_a_warning(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", every_n_train_steps=1)
    mc.setup(t, None, "fit")
    t.global_step = 1
    with pytest.warns(UserWarning, match="val_loss"):
        mc.on_train_batch_end(t, None, None, None, 0)
    assert os.listdir(tmp_path) == []


def test_default_dirpath_follows_the_first_logger(stub, tmp_path):
    t = stub(loggers=[CSVLogger(tmp_path / "logs", name="exp")])
    mc = ModelCheckpoint()
    mc.setup(t, None, "fit")
    assert mc.dirpath == str(tmp_path / "logs" / "exp" / "version_0" / "checkpoints")
    t2 = stub()
    mc2 = ModelCheckpoint()
    mc2.setup(t2, None, "fit")
    assert mc2.dirpath == os.path.join(str(tmp_path), "checkpoints")


def test_loggers_hear_of_each_save(stub, tmp_path):
    class Recorder(Logger):
        def __init__(self):
            self.seen = []

        def after_save_checkpoint(self, cb):
            self.seen.append(os.path.basename(cb.best_model_path))

    rec = Recorder()
    t = stub(loggers=[rec])
    epochs(ModelCheckpoint(dirpath=tmp_path, monitor="val_loss"), t, [2.0, 1.0, 3.0])
    assert rec.seen == ["epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt"]


def test_nothing_saved_outside_fit_or_during_sanity_check(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path)
    mc.setup(t, None, "validate")
    mc.on_validation_end(t, None)
    mc.setup(t, None, "fit")
    t.sanity_checking = True
    mc.on_validation_end(t, None)
    assert t.saved == []


def test_state_survives_a_checkpoint_file_and_pickling(stub, tmp_path):
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    epochs(mc, t, [0.9, 0.5, 0.7])
    torch.save({"cb": mc.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["cb"]
    mc2 = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)
    mc2.load_state_dict(state)
    assert mc2.best_model_path == mc.best_model_path
    assert set(mc2.best_k_models) == set(mc.best_k_models)
    assert mc2.kth_best_model_path == mc.kth_best_model_path
    # a resumed run keeps ranking against the restored top-k
    epochs(mc2, t, [9, 9, 9, 0.1])
    assert os.path.basename(mc2.best_model_path) == "epoch=3-step=20.ckpt"
    assert len([f for f in os.listdir(tmp_path) if f.startswith("epoch")]) == 2
    assert pickle.loads(pickle.dumps(mc2)).best_model_path == mc2.best_model_path


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"mode": "avg"}, "mode"),
        ({"save_top_k": -2}, "save_top_k"),
        ({"save_top_k": 3}, "monitor"),
        ({"every_n_train_steps": -1}, "every_n_train_steps"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kw)


def test_slash_in_a_metric_name_is_not_a_directory_but_in_the_template_it_is(stub, tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{val/acc:.1f}")
    assert os.path.basename(mc.format_checkpoint_name({"val/acc": 0.5})) == "val_acc=0.5.ckpt"
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path, filename="best/{epoch}", monitor="val_loss")
    epochs(mc, t, [1.0, 0.5, 0.7])
    assert os.listdir(tmp_path / "best") == ["epoch=1.ckpt"]  # top-1 removal inside sub-dir


def test_files_outside_dirpath_are_never_removed(stub, tmp_path):
    outside = tmp_path / "keep.ckpt"
    outside.write_text("x")
    t = stub()
    mc = ModelCheckpoint(dirpath=tmp_path / "ck")
    mc.setup(t, None, "fit")
    mc.best_model_path = str(outside)  # e.g. restored from a run that used another dirpath
    t.global_step = 1
    mc.on_train_epoch_end(t, None)
    assert outside.exists()
