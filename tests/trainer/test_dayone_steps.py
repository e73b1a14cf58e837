"""trainer.estimated_stepping_batches, read in configure_optimizers (OneCycleLR's total_steps)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import Trainer

QUIET = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False,
             enable_model_summary=False)


class OneCycle(TinyModule):
    """Records the estimate in a buffer (it travels back from DDP workers with the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("estimate", torch.zeros((), dtype=torch.float64))

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        self.estimate.fill_(total)
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        # OneCycleLR raises if stepped more than total_steps times: the estimate must be exact
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize("flags, expected", [
    (dict(max_epochs=3), 3 * 8),  # 64 samples / batch 8 = 8 batches per epoch
    (dict(max_epochs=3, accumulate_grad_batches=3), 3 * 3),  # ceil(8 / 3) steps per epoch
    (dict(max_epochs=3, max_steps=10), 10),
    (dict(max_epochs=2, limit_train_batches=0.5), 2 * 4),
    (dict(max_epochs=2, limit_train_batches=5, accumulate_grad_batches=2), 2 * 3),
])
def test_estimate_is_the_steps_fit_takes(flags, expected):
    m = OneCycle()
    t = Trainer(**flags, **QUIET)
    t.fit(m, make_loader(make_data(64)))
    assert m.estimate.item() == expected == t.global_step


def test_endless_and_unsized():
    t = Trainer(max_epochs=-1, **QUIET)
    assert t.estimated_stepping_batches == math.inf
    t = Trainer(max_steps=7, **QUIET)  # max_epochs unset: bounded by max_steps only
    assert t.estimated_stepping_batches == 7

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from make_data(64)

    m = OneCycle()
    t = Trainer(max_epochs=2, max_steps=5, **QUIET)
    t.fit(m, DataLoader(Stream(), batch_size=8))
    assert m.estimate.item() == 5 == t.global_step


def test_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="estimated_stepping_batches"):
        _ = Trainer(max_epochs=2, **QUIET).estimated_stepping_batches


@pytest.mark.ddp
def test_ddp_counts_this_ranks_share():
    m = OneCycle()
    t = Trainer(max_epochs=2, strategy="ddp", devices=2, accelerator="cpu", **QUIET)
    t.fit(m, make_loader(make_data(64)))
    assert m.estimate.item() == 2 * 4  # each of 2 ranks gets 4 of the 8 batches per epoch
