"""Checkpoint files: atomic writes, safe reads.

A checkpoint is data, not code: it is written to a temporary file in the target folder, flushed
to disk (fsync) and renamed over the target, so a reader never sees half a file; it is read
with ``torch.load(weights_only=True)``, so loading it cannot run code. Everything the Trainer
stores is therefore made of tensors, numbers, strings, lists, tuples and dicts.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.accelerator import cuda_rng_state, set_cuda_rng_state
from trainer.fileio import atomic_write

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "collect_rng_states",
    "restore_rng_states",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, foreign or holds something other than data."""


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (trainer/fileio.py: temp file in the same folder,
    fsync, rename, folder fsync)."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; any failure is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: no such file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, non-data globals, ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read as a trainflow checkpoint "
            f"(truncated, foreign or not data-only): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a trainflow checkpoint (no 'state_dict' entry)"
        )
    return obj


def collect_rng_states() -> dict[str, Any]:
    """python, numpy, torch (and cuda) RNG states, in a weights_only-loadable form."""
    np_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    cuda = cuda_rng_state()
    if cuda is not None:
        states["cuda"] = cuda
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of collect_rng_states."""
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        s = states["numpy"]
        np.random.set_state(
            {
                "bit_generator": s["bit_generator"],
                "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]},
                "has_gauss": s["has_gauss"],
                "gauss": s["gauss"],
            }
        )
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states:
        set_cuda_rng_state(states["cuda"])
