"""Two identical DDP fits (2 gloo workers, dropout) end with the same weights, bit for bit."""

from __future__ import annotations

import pytest
import torch
from ddp_workers import DropoutMLP, flat, make_data
from torch.utils.data import DataLoader

from trainer import Trainer
from trainer.launcher import seed_rank

pytestmark = pytest.mark.ddp


def _fit(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # what the train stage does with trainer.seed
    loader = DataLoader(make_data(n=32), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    module = DropoutMLP()
    Trainer(max_epochs=2, strategy="ddp", devices=2, deterministic=True, logger=False,
            enable_progress_bar=False, enable_checkpointing=False,
            accelerator="cpu").fit(module, loader)
    return flat(module).clone()


def test_two_identical_ddp_runs_with_dropout_give_identical_weights() -> None:
    first, second = _fit(3), _fit(3)
    assert torch.equal(first, second)
    assert not torch.equal(first, _fit(4))  # the seed matters: dropout draws from it


def test_ranks_get_distinct_reproducible_streams() -> None:
    draws = {}
    for rank in (0, 1):
        seed_rank(3, rank)
        draws[rank] = torch.rand(4)
    seed_rank(3, 0)
    assert torch.equal(torch.rand(4), draws[0])
    assert not torch.equal(draws[0], draws[1])
