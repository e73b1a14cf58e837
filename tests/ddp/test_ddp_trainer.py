"""The Trainer in DDP (2 gloo workers started by the launcher): the same numbers as one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ddp_workers import MLPModule, SaveThenDie, flat, make_data
from torch.utils.data import DataLoader

from trainer import Trainer
from trainer.callbacks import ModelCheckpoint
from trainer.launcher import WorkerError

pytestmark = pytest.mark.ddp

QUIET = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu"}


def test_two_ranks_of_b_equal_one_process_of_2b_and_sync_dist(tmp_path: Path) -> None:
    ds = make_data(n=64)
    single = MLPModule()
    t1 = Trainer(max_epochs=2, devices=1, enable_checkpointing=False, **QUIET)
    t1.fit(single, DataLoader(ds, batch_size=16, shuffle=False))

    ddp = MLPModule()
    before = flat(ddp).clone()
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="train_loss")
    t2 = Trainer(max_epochs=2, strategy="ddp", devices=2, callbacks=[ckpt], **QUIET)
    t2.fit(ddp, DataLoader(ds, batch_size=8, shuffle=False))

    # rank 0's weights came back into the caller's module, equal to the 1-process run
    assert not torch.equal(flat(ddp), before)
    assert (flat(ddp) - flat(single)).abs().max().item() <= 1e-6
    # the trainer state came back too
    assert t2.global_step == t1.global_step == 8
    assert t2.current_epoch == t1.current_epoch
    m = t2.callback_metrics
    assert m["rank_synced"].item() == pytest.approx(0.5)  # mean of ranks 0 and 1
    assert m["rank_local"].item() == 0.0  # not synced: rank 0's own value
    assert m["rank_max"].item() == 1.0  # synced on step with max
    # the synced epoch mean of the loss equals the 1-process epoch mean
    assert m["train_loss"].item() == pytest.approx(t1.callback_metrics["train_loss"].item(),
                                                   abs=1e-6)
    assert t2.logged_metrics["rank_synced"] == pytest.approx(0.5)
    # rank 0's checkpoint callback state: the best checkpoint, written by rank 0, is there
    best = t2.checkpoint_callback.best_model_path
    assert best and Path(best).parent == tmp_path and Path(best).is_file()
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in ddp.state_dict().items())


def _fit(path: Path | None, ckpt: Path | None = None, die: bool = False) -> MLPModule:
    ds = make_data(n=64)
    loader = DataLoader(ds, batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(7))
    module = MLPModule()
    callbacks = [SaveThenDie(str(path), save_at=6, die_at=7)] if die else []
    trainer = Trainer(max_epochs=3, strategy="ddp", devices=2, enable_checkpointing=False,
                      callbacks=callbacks, **QUIET)
    trainer.fit(module, loader, ckpt_path=str(ckpt) if ckpt else None)
    assert trainer.global_step == 12
    return module


def test_ddp_resume_after_a_kill_mid_epoch_gives_the_same_weights(tmp_path: Path) -> None:
    reference = _fit(None)
    ckpt = tmp_path / "mid-epoch.ckpt"
    with pytest.raises(WorkerError) as info:  # 4 steps per epoch: step 7 is mid epoch 2
        _fit(ckpt, die=True)
    assert info.value.rank == 1 and "SIGKILL" in str(info.value)
    assert ckpt.exists()
    resumed = _fit(None, ckpt=ckpt)
    assert (flat(resumed) - flat(reference)).abs().max().item() <= 1e-6


def test_predict_gathers_in_dataset_order() -> None:
    ds = make_data(n=37)  # odd: the sampler pads; the padding must not come back
    module = MLPModule()
    loader = DataLoader(ds, batch_size=5, shuffle=False)
    expected = Trainer(devices=1, **QUIET).predict(module, loader)
    got = Trainer(strategy="ddp", devices=2, **QUIET).predict(module, loader)
    assert [b.shape[0] for b in got] == [b.shape[0] for b in expected]
    assert torch.allclose(torch.cat(got), torch.cat(expected), atol=1e-6)
