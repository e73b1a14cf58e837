"""MLflowLogger under a real Trainer fit (SQLite store): params, per-step and per-epoch metrics
at the right steps, checkpoint artifacts, plots, FAILED on an exception."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("trainer.trainer")
from trainer.callbacks import ModelCheckpoint  # noqa: E402
from trainer.loggers.mlflow import MLflowLogger  # noqa: E402
from trainer.module import TrainModule  # noqa: E402
from trainer.trainer import Trainer  # noqa: E402

N_TRAIN, BATCH, EPOCHS = 32, 8, 2  # 4 steps per epoch


class Classifier(TrainModule):
    def __init__(
        self, hidden: int = 8, lr: float = 0.1, fail_at_step: int = -1, interrupt: bool = False
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at_step:
            if self.hparams.interrupt:
                raise KeyboardInterrupt
            raise RuntimeError(f"boom at step {self.global_step}")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N_TRAIN, 4, generator=g), torch.randint(0, 3, (N_TRAIN,), generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=BATCH), DataLoader(ds, batch_size=16)


def _fit(uri: str, tmp_path: Path, experiment: str, writer: str = "thread", **hp):
    logger = MLflowLogger(experiment, tracking_uri=uri, tags={"suite": "fit"}, writer=writer)
    trainer = Trainer(
        max_epochs=EPOCHS,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True)],
    )
    train, val = _loaders()
    return logger, trainer, lambda: trainer.fit(Classifier(**hp), train, val)


def _artifacts(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_fit_logs_params_metrics_checkpoints_and_plots(
    store_uri: str, tmp_path: Path, writer: str
) -> None:
    from mlflow import MlflowClient

    logger, trainer, fit = _fit(store_uri, tmp_path, "fit-ok", writer, hidden=8, lr=0.1)
    fit()
    client = MlflowClient(store_uri, store_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["hidden"] == "8" and run.data.params["lr"] == "0.1"
    steps = EPOCHS * N_TRAIN // BATCH
    step_hist = client.get_metric_history(logger.run_id, "train_loss_step")
    assert sorted(m.step for m in step_hist) == list(range(steps))
    epoch_hist = client.get_metric_history(logger.run_id, "train_loss_epoch")
    per_epoch = steps // EPOCHS
    assert sorted(m.step for m in epoch_hist) == [per_epoch * (e + 1) - 1 for e in range(EPOCHS)]
    assert len(client.get_metric_history(logger.run_id, "val_acc")) == EPOCHS
    # epoch: where each epoch starts and ends, not repeated on every step
    epoch_pts = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, "epoch"))
    assert epoch_pts == [
        p for e in range(EPOCHS) for p in ((per_epoch * e, e), (per_epoch * (e + 1) - 1, e))
    ]
    logged = trainer.logged_metrics
    assert all(type(v) is float for v in logged.values()) and logged["epoch"] == EPOCHS - 1
    arts = _artifacts(client, logger.run_id)
    best = Path(trainer.checkpoint_callback.best_model_path).name
    assert f"checkpoints/best/{best}" in arts and "checkpoints/last/last.ckpt" in arts
    assert {"plots/metrics_epoch.png", "plots/metrics_step.png"} <= set(arts)


def test_failing_fit_leaves_run_failed_with_error_tag(store_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    logger, _, fit = _fit(store_uri, tmp_path, "fit-fail", fail_at_step=5)
    with pytest.raises(RuntimeError, match="boom at step 5"):
        fit()
    run = MlflowClient(store_uri, store_uri).get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert "boom at step 5" in run.data.tags["error"]
    steps = [
        m.step for m in MlflowClient(store_uri).get_metric_history(logger.run_id, "train_loss_step")
    ]
    assert sorted(steps) == list(range(5))  # what was logged before the failure was flushed


def test_interrupted_fit_leaves_run_killed(store_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    logger, _, fit = _fit(store_uri, tmp_path, "fit-interrupt", fail_at_step=2, interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        fit()
    run = MlflowClient(store_uri, store_uri).get_run(logger.run_id)
    assert run.info.status == "KILLED" and run.data.tags["error_type"] == "KeyboardInterrupt"


@pytest.mark.ddp
def test_ddp_fit_logs_once_from_rank_zero_into_the_callers_run(
    store_uri: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    logger = MLflowLogger("fit-ddp", tracking_uri=store_uri, log_plots=False)
    trainer = Trainer(
        max_epochs=EPOCHS,
        strategy="ddp",
        devices=2,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    train, val = _loaders()
    trainer.fit(Classifier(), train, val)
    client = MlflowClient(store_uri, store_uri)
    runs = client.search_runs([logger.experiment_id])
    assert [r.info.run_id for r in runs] == [logger.run_id]  # one run, the caller's
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["hidden"] == "8"
    steps = sorted(m.step for m in client.get_metric_history(logger.run_id, "train_loss_step"))
    assert steps == list(range(EPOCHS * N_TRAIN // BATCH // 2))  # each rank: half the batches
