"""``ckpt_path="last"`` / ``"best"``: find the checkpoint a ModelCheckpoint wrote, also from a
fresh Trainer pointed at the same ``default_root_dir``.

Lightning looks for ``last*.ckpt`` in the checkpoint callback's directory and takes
``best_model_path`` from the callback. A fresh Trainer's callback has saved nothing yet, and with
a logger its directory is the *next* run's (``version_<N+1>/checkpoints``), so the search covers
the callback's directory and every ``<logger root>/<version>/checkpoints`` beside it; "best" is
read from the newest checkpoint there (the ModelCheckpoint state it holds names the best file).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from trainer.checkpoint import load_checkpoint

__all__ = ["find_checkpoint"]

_LAST = re.compile(r"last(-v\d+)?\.ckpt")


def _candidate_dirs(trainer: Any, cb: Any) -> list[str]:
    dirs = [cb.dirpath] if cb.dirpath else []
    loggers = trainer.loggers
    if loggers:
        lg = loggers[0]
        root = os.path.join(lg.save_dir or trainer.default_root_dir, str(lg.name))
        dirs += sorted(glob.glob(os.path.join(glob.escape(root), "*", "checkpoints")))
    else:
        dirs.append(os.path.join(trainer.default_root_dir, "checkpoints"))
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def _newest(paths: list[str]) -> str | None:
    return max(paths, key=os.path.getmtime) if paths else None


def find_checkpoint(trainer: Any, which: str) -> str:
    """The path ``ckpt_path=which`` ("last" or "best") means for ``trainer``, or a ValueError."""
    cb = trainer.checkpoint_callback
    if cb is None:
        raise ValueError(f"ckpt_path={which!r}: no ModelCheckpoint callback says where "
                         "checkpoints are (enable_checkpointing=False?); pass a path")
    known = getattr(cb, f"{which}_model_path", "")
    if known and os.path.isfile(known):
        return known
    dirs = _candidate_dirs(trainer, cb)
    files = [os.path.join(d, f) for d in dirs if os.path.isdir(d) for f in os.listdir(d)
             if f.endswith(".ckpt")]
    if which == "last":
        found = _newest([f for f in files if _LAST.fullmatch(os.path.basename(f))])
        if found is None:
            raise ValueError(f"ckpt_path='last': no last.ckpt in {dirs}; save one with "
                             "ModelCheckpoint(save_last=True), or pass a path")
        return found
    newest = _newest(files)
    best = ""
    if newest is not None:
        states = load_checkpoint(newest).get("callbacks", {})
        mine = states.get(cb.state_key, {})  # this callback's own state, else any ModelCheckpoint
        best = mine.get("best_model_path") or next(
            (s["best_model_path"] for k, s in states.items()
             if k.startswith("ModelCheckpoint") and s.get("best_model_path")), "")
    if not best or not os.path.isfile(best):
        raise ValueError(f"ckpt_path='best': no best checkpoint is known in {dirs} (fit with a "
                         "ModelCheckpoint first); pass a path")
    return best
