"""seed_everything: same numbers after the same seed; loader workers seeded per worker."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from tests.trainer.core_helpers import TinyModule, make_data, make_loader
from trainer import Trainer, seed_everything
from trainer.seed import reset_seed, worker_init_function


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_same_numbers_and_env():
    assert seed_everything(7) == 7
    a = _draw()
    seed_everything(7)
    assert _draw() == a
    seed_everything(8)
    assert _draw() != a
    assert os.environ["PL_GLOBAL_SEED"] == "8" and os.environ["PL_SEED_WORKERS"] == "0"


def test_none_reads_env_and_reset_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")
    assert seed_everything() == 123
    a = _draw()
    reset_seed()
    assert _draw() == a


@pytest.mark.parametrize("bad", [-1, 2**32, "x"])
def test_bad_seed_is_refused(bad):
    with pytest.raises(ValueError, match="seed_everything"):
        seed_everything(bad)


def _in_worker(worker_id: int, rank: int) -> tuple:
    """What a worker draws after torch seeded it (base + worker_id) and our init fn ran."""
    torch.manual_seed(1000 + worker_id)
    worker_init_function(worker_id, rank=rank)
    return _draw()


def test_worker_init_function_separates_ranks_and_workers():
    # torch seeds each worker from a base drawn from the loader's generator: the same base on
    # every DDP rank when the ranks are seeded alike; the init fn mixes in worker and rank
    draws = {(w, r): _in_worker(w, r) for w in (0, 1) for r in (0, 1)}
    assert len(set(draws.values())) == 4
    assert _in_worker(1, 1) == draws[(1, 1)]  # deterministic


def test_workers_true_gives_fit_loaders_the_init_fn():
    seed_everything(3, workers=True)
    dl = make_loader(make_data(16))
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(TinyModule(), dl)
    assert dl.worker_init_fn.func is worker_init_function
    assert dl.worker_init_fn.keywords == {"rank": 0}
    seed_everything(3, workers=False)
    dl = make_loader(make_data(16))
    Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(TinyModule(), dl)
    assert dl.worker_init_fn is None


def test_users_worker_init_fn_is_kept():
    seed_everything(1, workers=True)

    def mine(worker_id: int) -> None: ...

    dl = make_loader(make_data(16), num_workers=0, worker_init_fn=mine)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModule(), dl)
    assert dl.worker_init_fn is mine


def test_verbose_logs_the_seed(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="trainer.seed"):
        seed_everything(5)
        seed_everything(6, verbose=False)
    assert [r.getMessage() for r in caplog.records] == ["Seed set to 5"]
