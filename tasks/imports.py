"""The user's own code: ``module:Class`` paths from the config, found beside the config first.

A config file's folder goes to the front of ``sys.path`` when the config is loaded
(tasks/config.py), so ``model.class_path: my_models:Net`` finds ``my_models.py`` next to the
YAML without PYTHONPATH; DDP workers get the same ``sys.path`` (spawned processes start with
the parent's). The train
stage's cache key hashes the user source behind the classes it uses, the class's module and
the user modules it reaches (:func:`code_version`), so editing any of them retrains.
:func:`build_datamodule` makes the user's DataModule (``data.datamodule``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType
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
    """A hash of the user's source behind a class: its module and every user module that
    module reaches (base classes, imported helpers, transitively), so editing any of them
    reruns the stages that use the class.

    "User module" means a file outside the Python installation, site-packages and trainflow's
    own framework packages (``trainer``, ``tasks``, ``flows``: a framework change is covered by
    each stage's CODE_VERSION). Shipped models under ``models/`` count as user code.
    """
    cls = import_class(class_path, key)
    files = _user_source_files(cls)
    if not files:  # defined in a notebook or a C extension: the path is all we have
        return hashlib.sha256(class_path.encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_FRAMEWORK = ("trainer", "tasks", "flows")


def _user_source_files(cls: type) -> dict[str, Path]:
    """Module name → source file of every user module reachable from ``cls``'s module."""
    not_user = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}

    def user_file(module: ModuleType) -> Path | None:
        name = module.__name__
        if name.split(".")[0] in _FRAMEWORK or name in sys.builtin_module_names:
            return None
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            return None
        path = Path(file).resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            return None
        if any(path.is_relative_to(root) for root in not_user):
            return None
        return path

    found: dict[str, Path] = {}
    start = [sys.modules.get(c.__module__) for c in cls.__mro__]
    todo = [m for m in start if m is not None]
    while todo:
        module = todo.pop()
        if module.__name__ in found:
            continue
        path = user_file(module)
        if path is None:
            continue
        found[module.__name__] = path
        for value in vars(module).values():  # what the module imported or defined
            ref = value if isinstance(value, ModuleType) else sys.modules.get(
                getattr(value, "__module__", None) or "")
            if ref is not None and ref.__name__ not in found:
                todo.append(ref)
    return found


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
