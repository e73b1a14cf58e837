"""The Trainer with the real callbacks and loggers (trainer.callbacks, trainer.loggers)."""

from __future__ import annotations

import csv

import torch
from core_helpers import TinyModule, make_data, make_loader

from trainer import (
    CSVLogger,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    Trainer,
    TrainModule,
)


class Plateau(TinyModule):
    """val_loss gets worse every epoch after the first."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(float(self.current_epoch)))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def test_early_stopping_checkpoint_lr_monitor_csv(tmp_path):
    ds = make_data(n=32)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min",
                           save_last=True)
    logger = CSVLogger(save_dir=tmp_path, name="run")
    t = Trainer(max_epochs=10, enable_progress_bar=False, num_sanity_val_steps=0,
                log_every_n_steps=1, logger=logger,
                callbacks=[EarlyStopping(monitor="val_loss", patience=2), ckpt,
                           LearningRateMonitor(logging_interval="epoch")])
    t.fit(Plateau(), make_loader(ds), make_loader(ds, shuffle=False))
    assert t.current_epoch == 3  # best at epoch 0, two epochs without improvement
    assert t.checkpoint_callback is ckpt and t.early_stopping_callback is not None
    best = TrainModule.load_from_checkpoint(ckpt.best_model_path)
    assert isinstance(best, Plateau)
    assert "epoch=0" in ckpt.best_model_path
    rows = list(csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))))
    assert any(r.get("val_loss") for r in rows)
    assert any(k.startswith("lr") for r in rows for k, v in r.items() if v)


def test_progress_bar_runs_without_a_terminal(capsys):
    t = Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                num_sanity_val_steps=0)

    class M(TinyModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss, prog_bar=True, on_epoch=True)
            return loss

    t.fit(M(), make_loader(make_data(n=16)))
    assert t.progress_bar_callback is not None
    assert "loss" in capsys.readouterr().out


def test_test_with_best_checkpoint(tmp_path):
    ds = make_data(n=32)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min")
    t = Trainer(max_epochs=3, enable_progress_bar=False, num_sanity_val_steps=0, logger=False,
                callbacks=[ckpt])
    m = Plateau()
    t.fit(m, make_loader(ds), make_loader(ds, shuffle=False))
    out = t.test(m, make_loader(ds, shuffle=False), ckpt_path="best")
    assert 0.0 <= out[0]["test_acc"] <= 1.0
    best = TrainModule.load_from_checkpoint(ckpt.best_model_path)
    assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(),
                                                m.state_dict().values()))
