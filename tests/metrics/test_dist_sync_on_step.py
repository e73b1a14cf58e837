"""Metric(dist_sync_on_step=True): forward's batch value over every rank's batch (2 gloo
processes); the running states stay local; off, forward makes no collective call."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import dist_sync_on_step_worker as worker  # noqa: E402

from trainer.metrics import MeanMetric  # noqa: E402

pytestmark = pytest.mark.ddp


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_sync_on_step")
    ctx = mp.start_processes(worker.run, args=(str(tmp / "init"), str(tmp)), nprocs=2,
                             join=False, start_method="spawn")
    try:
        for _ in range(120):
            if ctx.join(timeout=1):
                break
        else:
            pytest.fail("workers did not finish within 120 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    out = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, res in enumerate(out):
        assert "exception" not in res, f"rank {r}:\n{res['exception']}"
    return out


def test_batch_value_covers_both_ranks(results):
    # step 1: rank 0 sees [1, 2], rank 1 [3, 5] -> 11 / 4; step 2: [4] and [6, 8, 10] -> 28 / 4
    for res in results:
        assert res["synced_steps"] == [2.75, 7.0]
        assert res["sum_steps"] == [11.0, 28.0]
        assert res["collection_steps"] == [{"mean": 2.75, "sum": 11.0},
                                           {"mean": 7.0, "sum": 28.0}]
    assert results[0]["local_steps"] == [1.5, 4.0] and results[1]["local_steps"] == [4.0, 8.0]


def test_running_states_stay_local_and_off_costs_no_collective(results):
    assert results[0]["synced_running"] == pytest.approx(7 / 3)  # rank 0's own 3 values
    assert results[1]["synced_running"] == pytest.approx(32 / 5)
    for res in results:
        assert res["local_calls"] == []
        assert res["synced_calls"] >= 2  # at least one collective per synced step


def test_flag_is_checked():
    with pytest.raises(ValueError, match="dist_sync_on_step"):
        MeanMetric(dist_sync_on_step="yes")
