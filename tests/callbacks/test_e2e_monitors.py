"""EarlyStopping, LearningRateMonitor and CSVLogger with the real Trainer."""

import csv
import os

import pytest
import yaml

pytest.importorskip("trainer.trainer")

from e2e_helpers import Scripted, loaders  # noqa: E402

from trainer import Trainer  # noqa: E402
from trainer.callbacks import EarlyStopping, LearningRateMonitor  # noqa: E402
from trainer.loggers import CSVLogger  # noqa: E402


def fit(tmp_path, module, callbacks=(), val=True, **kw):
    kw.setdefault("max_epochs", 10)
    kw.setdefault("logger", False)
    t = Trainer(callbacks=list(callbacks), default_root_dir=tmp_path, enable_progress_bar=False,
                enable_checkpointing=False, num_sanity_val_steps=0, **kw)
    train, v = loaders(val=val)
    t.fit(module, train, v)
    return t


@pytest.mark.parametrize(
    "kw, script, stopped",
    [
        ({"patience": 2}, [1.0, 0.8, 0.85, 0.9, 0.5], 3),
        ({"patience": 3}, [1.0, 0.8, 0.85, 0.9, 0.5, 0.6, 0.6, 0.6], 7),
        ({"patience": 2, "min_delta": 0.1}, [1.0, 0.95, 0.92, 0.5], 2),
        ({"patience": 1, "mode": "max"}, [0.1, 0.3, 0.2], 2),
        ({"patience": 10, "stopping_threshold": 0.25}, [1.0, 0.5, 0.2, 0.1], 2),
    ],
)
def test_early_stopping_stops_at_the_right_epoch(tmp_path, kw, script, stopped):
    es = EarlyStopping("val_loss", **kw)
    t = fit(tmp_path, Scripted(script), [es])
    assert es.stopped_epoch == stopped
    assert t.current_epoch == stopped + 1  # that epoch was the last one run


def test_early_stopping_never_triggered_runs_all_epochs(tmp_path):
    es = EarlyStopping("val_loss", patience=2)
    t = fit(tmp_path, Scripted([1.0, 0.9, 0.8, 0.7]), [es], max_epochs=4)
    assert t.current_epoch == 4 and es.stopped_epoch == 0 and es.wait_count == 0


def test_early_stopping_on_a_training_metric_without_validation(tmp_path):
    class Plateau(Scripted):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("flat", 1.0, on_step=False, on_epoch=True)
            return loss

    es = EarlyStopping("flat", patience=2)
    t = fit(tmp_path, Plateau(), [es], val=False)
    assert es.stopped_epoch == 2 and t.current_epoch == 3


def test_early_stopping_missing_key_is_a_clear_error(tmp_path):
    es = EarlyStopping("val_acc")
    with pytest.raises(KeyError, match=r"EarlyStopping\(monitor='val_acc'\).*val_loss"):
        fit(tmp_path, Scripted([1.0]), [es])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lr_monitor_with_an_epoch_scheduler(tmp_path):
    lg = CSVLogger(tmp_path)
    lrm = LearningRateMonitor(log_momentum=True)
    fit(tmp_path, Scripted(scheduler="epoch", lr=0.08), [lrm], max_epochs=3, logger=lg)
    assert lrm.lrs["lr-SGD"] == pytest.approx([0.08, 0.04, 0.02])
    assert lrm.lrs["lr-SGD-momentum"] == pytest.approx([0.9] * 3)
    rows = [r for r in read_csv(lg.metrics_file_path) if r.get("lr-SGD")]
    assert [float(r["lr-SGD"]) for r in rows] == pytest.approx([0.08, 0.04, 0.02])
    assert [int(r["step"]) for r in rows] == [0, 8, 16]


def test_lr_monitor_with_a_step_scheduler(tmp_path):
    lg = CSVLogger(tmp_path)
    lrm = LearningRateMonitor(logging_interval="step")
    fit(tmp_path, Scripted(scheduler="step", lr=1.0), [lrm], max_epochs=1, logger=lg,
        log_every_n_steps=2)
    assert lrm.lrs["lr-SGD"] == pytest.approx([1.0, 1 / 3, 1 / 5, 1 / 7])  # steps 0, 2, 4, 6


def test_lr_monitor_without_a_logger_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="LearningRateMonitor.*logger"):
        fit(tmp_path, Scripted(), [LearningRateMonitor()], max_epochs=1)


def test_csv_logger_contents_of_a_fit(tmp_path):
    lg = CSVLogger(tmp_path, name="run")
    fit(tmp_path, Scripted(lr=0.01), max_epochs=2, logger=lg, log_every_n_steps=4)
    rows = read_csv(lg.metrics_file_path)
    train_rows = [r for r in rows if r["train_loss"]]
    val_rows = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in train_rows] == [3, 7, 11, 15]  # every 4th optimizer step
    assert [int(r["epoch"]) for r in val_rows] == [0, 1]
    assert all(float(r["train_loss"]) > 0 for r in train_rows)
    with open(os.path.join(lg.log_dir, "hparams.yaml")) as f:
        hp = yaml.safe_load(f)
    assert hp["lr"] == 0.01 and hp["scheduler"] is None
    assert lg.log_dir == str(tmp_path / "run" / "version_0")


def test_early_stopping_state_travels_in_checkpoints(tmp_path):
    from trainer.callbacks import ModelCheckpoint

    def run(max_epochs, ckpt_path=None):
        es = EarlyStopping("val_loss", patience=3)
        mc = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
        t = Trainer(max_epochs=max_epochs, callbacks=[es, mc], default_root_dir=tmp_path,
                    logger=False, enable_progress_bar=False, num_sanity_val_steps=0)
        train, val = loaders()
        t.fit(Scripted([1.0, 0.5, 0.6, 0.7, 0.8, 0.9]), train, val, ckpt_path=ckpt_path)
        return es, t

    es1, _ = run(4)  # epochs 0-3: best 0.5 at epoch 1, then two epochs without improvement
    assert (es1.wait_count, es1.best_score) == (2, 0.5)
    es2, t2 = run(10, ckpt_path=tmp_path / "ck" / "last.ckpt")
    assert es2.stopped_epoch == 4 and t2.current_epoch == 5  # the third miss, right after resume
