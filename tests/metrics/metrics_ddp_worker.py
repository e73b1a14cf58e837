"""Worker for the 2-process gloo metric tests (module-level so spawn can import it)."""

from __future__ import annotations

import functools
import os
import time
import traceback
import warnings

import torch
import torch.distributed as dist

COUNTED = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
    "broadcast_object_list", "barrier", "monitored_barrier", "gather", "scatter", "reduce",
    "reduce_scatter", "all_to_all", "send", "recv", "new_group",
)
CALLS: list[str] = []


def count_collectives() -> None:
    """Wrap the torch.distributed collectives so every call is recorded in CALLS."""
    for name in COUNTED:
        fn = getattr(dist, name, None)
        if fn is None or hasattr(fn, "_counted"):
            continue

        def wrapped(*a, __fn=fn, __name=name, **k):
            CALLS.append(__name)
            return __fn(*a, **k)

        wrapped._counted = True  # type: ignore[attr-defined]
        functools.update_wrapper(wrapped, fn)
        setattr(dist, name, wrapped)


def data(seed: int, n: int, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    preds = torch.randn(n, c, generator=g).softmax(1)
    target = torch.randint(0, c, (n,), generator=g)
    return preds, target


def shards(n0: int, n1: int, seed: int):
    preds, target = data(seed, n0 + n1)
    return (preds[:n0], target[:n0]), (preds[n0:], target[n0:])


def five():
    from trainer.metrics import AUROC, Accuracy, F1Score, MetricCollection, Precision, Recall

    return MetricCollection({
        "acc": Accuracy("multiclass", num_classes=4),
        "prec": Precision("multiclass", num_classes=4, average="macro"),
        "rec": Recall("multiclass", num_classes=4, average="macro"),
        "f1": F1Score("multiclass", num_classes=4, average="macro"),
        "auroc": AUROC("multiclass", num_classes=4),
    })


def _as_py(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _as_py(x) for k, x in v.items()}
    return v


def scenario_collection(rank: int, sizes: tuple[int, int], seed: int, device: str = "cpu") -> dict:
    mc = five().to(device)
    mine = tuple(x.to(device) for x in shards(*sizes, seed)[rank])
    # two batches per rank (the empty shard does no update at all)
    n = mine[0].shape[0]
    for a, b in ((0, n // 2), (n // 2, n)):
        if b > a:
            mc.update(mine[0][a:b], mine[1][a:b])
    local_before = int(mc["acc"].confmat.sum())
    CALLS.clear()
    t0 = time.perf_counter()
    out = mc.compute()
    elapsed = time.perf_counter() - t0
    calls = list(CALLS)
    local_after = int(mc["acc"].confmat.sum())
    local_cat_rows = sum(t.shape[0] for t in mc["auroc"].preds)
    # cached: a second compute does no collective
    CALLS.clear()
    mc.compute()
    cached_calls = list(CALLS)
    # members computed one by one (as the Trainer does for self.log(name, member)): the first
    # computes the whole collection with one sync, the others hit the cache
    if n:
        mc.update(mine[0][:1], mine[1][:1])
    else:
        mc.update(torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device))
    CALLS.clear()
    one_by_one = {k: _as_py(m.compute()) for k, m in mc.items(keep_base=True)}
    member_calls = list(CALLS)
    return {
        "values": _as_py(out), "calls": calls, "cached_calls": cached_calls,
        "member_calls": member_calls, "one_by_one": one_by_one,
        "seconds": elapsed, "local_after": local_after,
        "local_before": local_before, "local_cat_rows": local_cat_rows,
    }


def scenario_misc(rank: int) -> dict:
    from trainer.metrics import (
        AUROC,
        CatMetric,
        MaxMetric,
        MeanMetric,
        MeanSquaredError,
        Metric,
        R2Score,
        sync_metrics,
    )

    g = torch.Generator().manual_seed(100 + rank)
    n = 30 if rank == 0 else 11
    p, t = torch.randn(n, generator=g), torch.randn(n, generator=g)
    ms = {"mse": MeanSquaredError(), "r2": R2Score(), "mean": MeanMetric(), "max": MaxMetric(),
          "cat": CatMetric(), "auroc_cpu": AUROC("binary", compute_on_cpu=True)}
    ms["mse"].update(p, t)
    ms["r2"].update(p, t)
    ms["mean"].update(p, weight=torch.rand(n, generator=g) + 0.5)
    ms["max"].update(p)
    ms["cat"].update(p)
    ms["auroc_cpu"].update(p.sigmoid(), (t > 0).long())
    out = {}
    CALLS.clear()
    with sync_metrics(list(ms.values())):
        for k, m in ms.items():
            out[k] = _as_py(m.compute())
    calls = list(CALLS)

    class RankMean(Metric):
        def __init__(self):
            super().__init__()
            self.add_state("x", torch.zeros(2), "mean")
            self.add_state("y", torch.zeros(()), lambda s: s.prod(0))

        def update(self, v):
            self.x = self.x + v
            self.y = self.y + v[0]

        def compute(self):
            return torch.cat([self.x, self.y.reshape(1)])

    rm = RankMean()
    rm.update(torch.tensor([float(rank + 1), 10.0 * (rank + 1)]))
    out["rank_mean"] = _as_py(rm.compute())
    # sync_context gives the global states inside, local ones after
    m = MeanSquaredError()
    m.update(p, t)
    with m.sync_context():
        out["ctx_total"] = int(m.total)
    out["ctx_local_total"] = int(m.total)
    return {"values": out, "calls": calls, "inputs": {"p": p.tolist(), "t": t.tolist()}}


def scenario_timeout(rank: int) -> dict:
    from trainer.metrics import Accuracy, MetricSyncError

    m = Accuracy("binary", sync_timeout=2.0)
    m.update(torch.tensor([0.9]), torch.tensor([1]))
    m.compute()  # together: creates the group with the 2 s timeout
    m.update(torch.tensor([0.9]), torch.tensor([1]))
    if rank == 1:
        time.sleep(4)  # never calls compute
        return {"skipped": True}
    t0 = time.perf_counter()
    try:
        m.compute()
    except MetricSyncError as err:
        return {"error": str(err), "seconds": time.perf_counter() - t0}
    return {"error": None, "seconds": time.perf_counter() - t0}


def run(rank: int, init_file: str, out_dir: str, device: str = "cpu") -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=2)
        count_collectives()
        # warm-up: the first sync creates the metrics' gloo group (a collective, once)
        warm = five()
        CALLS.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nothing accumulated: undefined values
            warm.compute()
        result["warmup_calls"] = list(CALLS)
        result["uneven"] = scenario_collection(rank, (100, 63), seed=1, device=device)
        result["empty"] = scenario_collection(rank, (37, 0), seed=2, device=device)
        if device == "cpu":
            result["misc"] = scenario_misc(rank)
            result["timeout"] = scenario_timeout(rank)
    except BaseException:
        result["exception"] = traceback.format_exc()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    os._exit(0)  # the timed-out group cannot be torn down cleanly
