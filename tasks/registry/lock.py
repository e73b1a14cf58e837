"""The registry lock: one writer at a time per registered model, across every writer's process.

Where the lock lives (a Prefect global concurrency limit, or a file beside the SQLite store) is
decided in ``tasks/promotion_lock.py``; this module names the lock file for a store URI and turns
a timeout into a :class:`~tasks.registry.names.RegistryError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.registry.names import RegistryError


def lock_path(uri: str) -> Path:
    """The lock file for ``uri``: beside the SQLite store, else in the temp folder keyed by URI."""
    from trainer.loggers.mlflow_store import sqlite_path

    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".registry.lock")
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"trainflow-registry-{key}.lock"


@contextlib.contextmanager
def registry_lock(uri: str, timeout: float = 120.0, name: str | None = None) -> Iterator[None]:
    """Exclusive lock for registry writes of model ``name`` on ``uri``, shared by every writer:
    a Prefect global concurrency limit with a Prefect server, else a file lock beside the SQLite
    store (tasks/promotion_lock.py)."""
    from tasks.promotion_lock import LockTimeout, hold
    from trainer.loggers.mlflow_store import sqlite_path

    try:  # LockTimeout comes only from taking the lock: the body raises RegistryError
        with hold(name, lock_path(uri), sqlite_path(uri) is not None, timeout):
            yield
    except LockTimeout as err:
        raise RegistryError(str(err)) from None
