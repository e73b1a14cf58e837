"""The Trainer in DDP (2 gloo workers started by the launcher): the same numbers as one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ddp_workers import (
    CountGradAllReduce,
    DDPOrderSampler,
    MLPModule,
    SaveMidWindowThenDie,
    SaveThenDie,
    flat,
    make_data,
)
from torch.utils.data import DataLoader

from trainer import Trainer
from trainer.callbacks import ModelCheckpoint
from trainer.launcher import WorkerError

pytestmark = pytest.mark.ddp

QUIET = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu"}
N, B, EPOCHS, SEED = 64, 8, 3, 7  # 4 steps per epoch, 12 in all


def _ddp_fit(ckpt_dir: Path | None = None, die_ckpt: Path | None = None,
             resume: Path | None = None) -> tuple[MLPModule, Trainer]:
    loader = DataLoader(make_data(n=N), batch_size=B, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    module = MLPModule()
    callbacks: list = []
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, monitor="train_loss"))
    if die_ckpt is not None:  # save after step 6, rank 1 SIGKILLed at step 7 (mid epoch 2)
        callbacks.append(SaveThenDie(str(die_ckpt), save_at=6, die_at=7))
    trainer = Trainer(max_epochs=EPOCHS, strategy="ddp", devices=2, callbacks=callbacks,
                      enable_checkpointing=ckpt_dir is not None, **QUIET)
    trainer.fit(module, loader, ckpt_path=str(resume) if resume else None)
    return module, trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[MLPModule, Trainer, Path]:
    """One uninterrupted 2-rank fit, shuffled, with a ModelCheckpoint."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    module, trainer = _ddp_fit(ckpt_dir=ckpt_dir)
    return module, trainer, ckpt_dir


def test_two_ranks_of_b_equal_one_process_of_2b_and_sync_dist(reference) -> None:
    ddp, t2, ckpt_dir = reference
    # one process, batch 2B, the same samples at each step (the DistributedSampler's order)
    single = MLPModule()
    before = flat(single).clone()
    loader = DataLoader(make_data(n=N), batch_size=2 * B,
                        sampler=DDPOrderSampler(N, 2, B, SEED))
    t1 = Trainer(max_epochs=EPOCHS, devices=1, enable_checkpointing=False, **QUIET)
    t1.fit(single, loader)

    # rank 0's weights came back into the caller's module, equal to the 1-process run
    assert not torch.equal(flat(ddp), before)
    assert (flat(ddp) - flat(single)).abs().max().item() <= 1e-6
    # the trainer state came back too
    assert t2.global_step == t1.global_step == EPOCHS * N // (2 * B)
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
    assert best and Path(best).parent == ckpt_dir and Path(best).is_file()
    saved = torch.load(best, weights_only=True)
    assert saved["global_step"] > 0 and set(saved["state_dict"]) == set(ddp.state_dict())


def test_ddp_resume_after_a_kill_mid_epoch_gives_the_same_weights(reference,
                                                                  tmp_path: Path) -> None:
    ref_module, ref_trainer, _ = reference
    ckpt = tmp_path / "mid-epoch.ckpt"
    with pytest.raises(WorkerError) as info:
        _ddp_fit(die_ckpt=ckpt)
    assert info.value.rank == 1 and "SIGKILL" in str(info.value)
    assert ckpt.exists()
    resumed, trainer = _ddp_fit(resume=ckpt)
    assert trainer.global_step == ref_trainer.global_step
    assert (flat(resumed) - flat(ref_module)).abs().max().item() <= 1e-6


def test_ddp_resume_inside_an_accumulation_window_gives_the_same_weights(tmp_path: Path) -> None:
    """Each rank's partial gradient sums go into the checkpoint, so the resumed window's
    optimizer step is the one the uninterrupted run takes."""

    def fit(callbacks: list | None = None, resume: Path | None = None) -> MLPModule:
        loader = DataLoader(make_data(n=N), batch_size=B, shuffle=True,
                            generator=torch.Generator().manual_seed(SEED))
        module = MLPModule()
        trainer = Trainer(max_epochs=EPOCHS, strategy="ddp", devices=2, accumulate_grad_batches=2,
                          callbacks=callbacks, enable_checkpointing=False, **QUIET)
        trainer.fit(module, loader, ckpt_path=str(resume) if resume else None)
        return module

    full = fit()
    ckpt = tmp_path / "mid-window.ckpt"
    with pytest.raises(WorkerError):  # saved after batch 0 of epoch 1 (4 per rank, windows of 2)
        fit([SaveMidWindowThenDie(str(ckpt), epoch=1, batch_idx=0)])
    per_rank = torch.load(ckpt, weights_only=True)["loops"]["fit"]["pending_grads"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0][0], per_rank[1][0])
    resumed = fit(resume=ckpt)
    assert (flat(resumed) - flat(full)).abs().max().item() <= 1e-6


def test_predict_gathers_in_dataset_order() -> None:
    ds = make_data(n=37)  # odd: the sampler pads; the padding must not come back
    module = MLPModule()
    loader = DataLoader(ds, batch_size=5, shuffle=False)
    expected = Trainer(devices=1, **QUIET).predict(module, loader)
    got = Trainer(strategy="ddp", devices=2, **QUIET).predict(module, loader)
    assert [b.shape[0] for b in got] == [b.shape[0] for b in expected]
    assert torch.allclose(torch.cat(got), torch.cat(expected), atol=1e-6)


def test_accumulation_under_ddp_syncs_once_per_optimizer_step(tmp_path: Path) -> None:
    """2 ranks x B with accumulate 2 == 1 process x 2B with accumulate 2, and the micro-steps
    before each optimizer step skip DDP's gradient all-reduce (forward and backward in no_sync)."""
    count_file = tmp_path / "allreduces.txt"
    loader = DataLoader(make_data(n=N), batch_size=B, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    ddp = MLPModule()
    t2 = Trainer(max_epochs=EPOCHS, strategy="ddp", devices=2, accumulate_grad_batches=2,
                 callbacks=[CountGradAllReduce(str(count_file))], enable_checkpointing=False,
                 **QUIET)
    t2.fit(ddp, loader)

    single = MLPModule()
    t1 = Trainer(max_epochs=EPOCHS, devices=1, accumulate_grad_batches=2,
                 enable_checkpointing=False, **QUIET)
    t1.fit(single, DataLoader(make_data(n=N), batch_size=2 * B,
                              sampler=DDPOrderSampler(N, 2, B, SEED)))

    assert t2.global_step == t1.global_step == EPOCHS * N // (2 * B) // 2
    assert (flat(ddp) - flat(single)).abs().max().item() <= 1e-6
    # the tiny MLP fits in one DDP bucket: one all-reduce per optimizer step, none in between
    assert int(count_file.read_text()) == t2.global_step
