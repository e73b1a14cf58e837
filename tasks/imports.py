"""The user's own code: ``module:Class`` paths from the config, found beside the config first.

A config file's folder goes to the front of ``sys.path`` when the config is loaded
(tasks/config.py), so ``model.class_path: my_models:Net`` finds ``my_models.py`` next to the
YAML without PYTHONPATH; DDP workers get the same ``sys.path`` (spawned processes start with
the parent's). The train
stage's cache key hashes the source files of the classes it uses (:func:`code_version`), so
editing them retrains. :func:`build_datamodule` makes the user's DataModule (``data.datamodule``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.types import DatasetRef, StageError

if TYPE_CHECKING:
    from tasks.config import TrainerConfig


def use_code_dir(folder: str | Path) -> None:
    """Put ``folder`` at the front of ``sys.path`` (once): modules there are found first."""
    folder = str(Path(folder).resolve())
    if sys.path[:1] != [folder]:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
        importlib.invalidate_caches()


def import_class(class_path: str, key: str = "model.class_path") -> type:
    """``pkg.mod:Class`` → the class; errors name the config key (``model.class_path``)."""
    mod_name, _, cls_name = class_path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise StageError(
            f"{key}: cannot import {mod_name!r} ({err}); put {mod_name.replace('.', '/')}.py "
            "beside the config file or on PYTHONPATH"
        ) from None
    cls = getattr(mod, cls_name, None)
    if not isinstance(cls, type):
        raise StageError(f"{key}: {mod_name!r} has no class {cls_name!r}")
    return cls


def code_version(class_path: str, key: str = "model.class_path") -> str:
    """A hash of the source file of a class (so editing it reruns the stages that use it)."""
    cls = import_class(class_path, key)
    try:
        src = Path(inspect.getfile(cls)).read_bytes()
    except (TypeError, OSError):
        src = class_path.encode()
    return hashlib.sha256(src).hexdigest()[:16]


def build_datamodule(class_path: str, data: DatasetRef, trainer: TrainerConfig) -> Any:
    """The user's DataModule (``data.datamodule``), given what its ``__init__`` takes of: the
    prepared data (``data``, a DatasetRef), ``batch_size`` and ``seed``."""
    cls = import_class(class_path, "data.datamodule")
    offered = {"data": data, "batch_size": trainer.batch_size, "seed": trainer.seed}
    params = inspect.signature(cls.__init__).parameters
    try:
        return cls(**{k: v for k, v in offered.items() if k in params})
    except TypeError as err:
        raise StageError(f"data.datamodule: {cls.__name__}() failed: {err}") from None
