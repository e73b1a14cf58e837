"""seed_everything: one seed for Python's ``random``, NumPy and torch, and for loader workers.

As in Lightning, the seed is also written to ``PL_GLOBAL_SEED`` so that processes started later
(DDP workers) seed themselves the same way (:func:`reset_seed`), and ``workers=True`` writes
``PL_SEED_WORKERS=1`` so that the Trainer gives every DataLoader without a ``worker_init_fn``
one (:func:`worker_init_function`) that seeds each worker differently per worker and per rank.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from typing import Any

import torch
from torch.utils.data import DataLoader

__all__ = ["seed_everything", "reset_seed", "worker_init_function", "add_worker_init_fn"]

_log = logging.getLogger(__name__)
_MAX_SEED = 2**32 - 1  # NumPy's legacy seed accepts uint32 only


def _numpy() -> Any:
    try:
        import numpy as np
    except ImportError:  # trainer/ runs with torch alone
        return None
    return np


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, NumPy and torch (all devices) with ``seed``; return it.

    ``seed=None`` reads ``PL_GLOBAL_SEED`` from the environment, else uses 0. ``workers=True``
    makes the Trainer seed DataLoader worker processes too (see :func:`worker_init_function`).
    ``verbose``: log "Seed set to N" (logger ``trainer.seed``, level INFO), as Lightning does.
    """
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        try:
            seed = 0 if env is None else int(env)
        except ValueError:
            raise ValueError(f"seed_everything: PL_GLOBAL_SEED={env!r} in the environment is "
                             "not an int; unset it or pass seed=...") from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"seed_everything(seed=...): must be an int (got {seed!r})") from None
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything(seed=...): must be in [0, {_MAX_SEED}] (got {seed})")
    if verbose:
        _log.info("Seed set to %d", seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(bool(workers)))
    random.seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    return seed


def reset_seed() -> None:
    """Seed again from ``PL_GLOBAL_SEED`` (a DDP worker calls it at setup); no-op if unset."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        seed_everything(int(seed), workers=os.environ.get("PL_SEED_WORKERS", "0") == "1",
                        verbose=False)


def worker_init_function(worker_id: int, rank: int = 0) -> None:
    """Seed torch, ``random`` and NumPy in a DataLoader worker from (base seed, worker, rank).

    torch gives worker ``i`` the seed ``base + i`` (base drawn from the loader's generator) and
    seeds ``random`` with it, but not NumPy: forked workers would share NumPy's state. Mixing in
    the rank also keeps the workers of different DDP ranks apart."""
    base = torch.initial_seed() - worker_id
    np = _numpy()
    if np is not None:
        ss = np.random.SeedSequence([base, worker_id, rank])
        torch_seed, py_seed = (int(s) for s in ss.generate_state(2, dtype=np.uint64))
        np.random.seed(ss.generate_state(4))
    else:  # no NumPy: a plain hash of the three numbers is enough for torch and random
        torch_seed = hash((base, worker_id, rank)) & (2**63 - 1)
        py_seed = torch_seed ^ 0x9E3779B97F4A7C15
    torch.manual_seed(torch_seed)
    random.seed(py_seed)


def add_worker_init_fn(dataloader: Any, rank: int) -> None:
    """After ``seed_everything(workers=True)``: give a DataLoader without a ``worker_init_fn``
    :func:`worker_init_function` for ``rank`` (the user's own one is kept)."""
    if os.environ.get("PL_SEED_WORKERS") != "1":
        return
    if isinstance(dataloader, DataLoader) and dataloader.worker_init_fn is None:
        dataloader.worker_init_fn = functools.partial(worker_init_function, rank=rank)
