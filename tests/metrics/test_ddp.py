"""Metrics synced across 2 gloo processes: equal to sklearn on all data, few collectives."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(__file__))
import metrics_ddp_worker as worker  # noqa: E402

pytestmark = pytest.mark.ddp


def launch(tmp, device: str = "cpu") -> list[dict]:
    """Run metrics_ddp_worker.run on 2 gloo processes; each rank's result dict."""
    ctx = mp.start_processes(worker.run, args=(str(tmp / "init"), str(tmp), device), nprocs=2,
                             join=False, start_method="spawn")
    try:
        for _ in range(120):  # 120 s at most
            if ctx.join(timeout=1):
                break
        else:
            pytest.fail("metric DDP workers did not finish within 120 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    out = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, res in enumerate(out):
        assert "exception" not in res, f"rank {r}:\n{res.get('exception')}"
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("metrics_ddp"))


def _sklearn_five(preds, target):
    p, t = preds.argmax(1).numpy(), target.numpy()
    labels = [0, 1, 2, 3]
    return {
        "acc": skm.accuracy_score(t, p),
        "prec": skm.precision_score(t, p, average="macro", labels=labels, zero_division=0),
        "rec": skm.recall_score(t, p, average="macro", labels=labels, zero_division=0),
        "f1": skm.f1_score(t, p, average="macro", labels=labels, zero_division=0),
        "auroc": skm.roc_auc_score(t, preds.numpy(), multi_class="ovr", labels=labels),
    }


CASES = [("uneven", (100, 63), 1), ("empty", (37, 0), 2)]


@pytest.mark.parametrize("case,sizes,seed", CASES)
def test_collection_sync_equals_sklearn_with_at_most_3_collectives(results, case, sizes, seed):
    check_collection(results, case, sizes, seed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_collection_sync_cuda_states(tmp_path):
    """States on the GPU (both ranks share one card here): synced over the gloo group."""
    res = launch(tmp_path, "cuda")
    for case, sizes, seed in CASES:
        check_collection(res, case, sizes, seed)


def check_collection(results, case, sizes, seed):
    preds, target = worker.data(seed, sum(sizes))
    ref = _sklearn_five(preds, target)
    for rank, res in enumerate(results):
        got = res[case]
        for k, v in ref.items():
            np.testing.assert_allclose(got["values"][k], v, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{case} rank {rank} {k}")
        assert len(got["calls"]) <= 3, got["calls"]
        assert got["calls"] == ["all_reduce", "all_gather"], got["calls"]
        assert got["cached_calls"] == []
        assert got["member_calls"] == ["all_reduce", "all_gather"], got["member_calls"]
        # local states restored after compute
        assert got["local_after"] == got["local_before"] == sizes[rank]
        assert got["local_cat_rows"] == sizes[rank]


def test_warmup_creates_the_group_once(results):
    for res in results:
        assert res["warmup_calls"].count("new_group") == 1
        assert len(res["warmup_calls"]) <= 4


def test_misc_metrics_sync(results):
    p = torch.tensor(results[0]["misc"]["inputs"]["p"] + results[1]["misc"]["inputs"]["p"])
    t = torch.tensor(results[0]["misc"]["inputs"]["t"] + results[1]["misc"]["inputs"]["t"])
    for rank, res in enumerate(results):
        v = res["misc"]["values"]
        np.testing.assert_allclose(v["mse"], skm.mean_squared_error(t, p), rtol=1e-6)
        np.testing.assert_allclose(v["r2"], skm.r2_score(t, p), rtol=1e-6)
        np.testing.assert_allclose(v["max"], float(p.max()), rtol=1e-6)
        np.testing.assert_allclose(v["cat"], p.numpy(), rtol=1e-6)
        np.testing.assert_allclose(v["auroc_cpu"], skm.roc_auc_score((t > 0).long(), p.sigmoid()),
                                   rtol=1e-6)
        # 'mean' state: average over ranks; callable: product over ranks
        np.testing.assert_allclose(v["rank_mean"], [1.5, 15.0, 2.0], rtol=1e-6)
        assert v["ctx_total"] == 41 and v["ctx_local_total"] == (30 if rank == 0 else 11)
        # six metrics, 2 dtypes of sum states (float64, int64) + max + the cat gather
        assert len(res["misc"]["calls"]) <= 4, res["misc"]["calls"]


def test_compute_on_one_rank_only_fails_within_timeout(results):
    res = results[0]["timeout"]
    assert res["error"] is not None, "compute on one rank should have failed"
    assert "must run on every rank" in res["error"]
    assert "all_reduce did not complete within 2 s" in res["error"]
    assert res["seconds"] < 4.0
    assert results[1]["timeout"] == {"skipped": True}
