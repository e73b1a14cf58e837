"""Worker for test_dist_sync_on_step.py (module-level so spawn can import it)."""

from __future__ import annotations

import os
import traceback

import torch
import torch.distributed as dist
from metrics_ddp_worker import CALLS, count_collectives

from trainer.metrics import MeanMetric, MetricCollection, SumMetric


def run(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=2)
        count_collectives()
        batches = {0: [torch.tensor([1.0, 2.0]), torch.tensor([4.0])],
                   1: [torch.tensor([3.0, 5.0]), torch.tensor([6.0, 8.0, 10.0])]}[rank]
        synced = MeanMetric(dist_sync_on_step=True, sync_on_compute=False)
        local = MeanMetric(sync_on_compute=False)
        CALLS.clear()
        result["local_steps"] = [float(local(b)) for b in batches]
        result["local_calls"] = list(CALLS)
        result["synced_steps"] = [float(synced(b)) for b in batches]
        result["synced_calls"] = len(CALLS) - len(result["local_calls"])
        result["synced_running"] = float(synced.compute())  # running states stayed local
        # one summed state: the fast forward path, which the flag must leave
        total = SumMetric(dist_sync_on_step=True, sync_on_compute=False)
        result["sum_steps"] = [float(total(b)) for b in batches]
        coll = MetricCollection({"mean": MeanMetric(dist_sync_on_step=True),
                                 "sum": SumMetric(dist_sync_on_step=True)})
        result["collection_steps"] = [{k: float(v) for k, v in coll(b).items()}
                                      for b in batches]
        # both ranks done with gloo before either tears it down: a rank that destroys its
        # group while the peer's last collective still reads from it aborts the peer (SIGABRT,
        # "terminate called without an active exception", about 1 run in 6)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        result["exception"] = traceback.format_exc()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
