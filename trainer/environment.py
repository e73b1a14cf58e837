"""The cluster environment: rank layout from env vars (torchrun, SLURM, our workers), threads.

Its own module so that strategy.py and launcher.py both read it without importing each other.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

__all__ = ["cluster_env", "set_threads_per_rank"]


def cluster_env() -> dict[str, Any] | None:
    """The rank layout given by the environment (torchrun, SLURM, one of our workers), or None.

    torchrun / our workers: RANK, WORLD_SIZE, LOCAL_RANK (+ MASTER_ADDR, MASTER_PORT).
    SLURM without torchrun (``srun python train.py``): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
    with MASTER_ADDR and MASTER_PORT exported by the batch script.
    """
    env = os.environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return {
            "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env["LOCAL_RANK"]),
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            "source": "torchelastic" if "TORCHELASTIC_RUN_ID" in env else "env",
        }
    slurm = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT")
    if all(k in env for k in slurm) and int(env["SLURM_NTASKS"]) > 1:
        ntasks_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        return {
            "rank": int(env["SLURM_PROCID"]),
            "world_size": int(env["SLURM_NTASKS"]),
            "local_rank": int(env["SLURM_LOCALID"]),
            "local_world_size": int(ntasks_node) if ntasks_node.isdigit() else 1,
            "source": "slurm",
        }
    return None


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads_per_rank(local_world_size: int, threads: int | None = None) -> int:
    """Give each rank its share of the cores (torch's default is all of them, per process)."""
    if threads is None:
        if "OMP_NUM_THREADS" in os.environ:  # the user (or torchrun) decided
            threads = int(os.environ["OMP_NUM_THREADS"])
        else:
            threads = max(1, _available_cpus() // max(1, local_world_size))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work ran
        torch.set_num_interop_threads(threads)
    return threads
