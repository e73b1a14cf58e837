"""The lock that serialises registry writes (register, promote) of one registered model.

It must be something every writer shares. With a Prefect server (``PREFECT_API_URL`` set, as in
team mode) and an MLflow server, writers may sit on different machines: the lock is a Prefect
global concurrency limit of 1 named after the model, held on that server (created if missing).
With the embedded SQLite store every writer shares its file system: a lock (``filelock``) on a
file beside the database. (An MLflow server without a Prefect server falls back to a file lock in
the temp folder, which protects one machine only: team mode sets both URLs.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockTimeout", "hold", "limit_name", "uses_prefect"]


class LockTimeout(TimeoutError):
    """The lock was still held by another writer when the timeout ran out."""


def limit_name(model: str) -> str:
    """The global concurrency limit for one registered model (names are already validated)."""
    return f"trainflow-registry-{model}"


def uses_prefect(is_sqlite: bool) -> bool:
    """Whether the lock lives on the Prefect server: a server is configured and the store is
    not a local SQLite file (whose writers share the file system, Prefect or not)."""
    return bool(os.environ.get("PREFECT_API_URL")) and not is_sqlite


@contextlib.contextmanager
def prefect_lock(model: str, timeout: float) -> Iterator[None]:
    """Hold the model's global concurrency limit (limit 1, created if missing) on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = limit_name(model)
    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):  # another writer created it just now
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        limit = client.read_global_concurrency_limit_by_name(name)
    if limit.limit != 1 or not limit.active:
        raise RuntimeError(
            f"registry lock {name!r}: the global concurrency limit is {limit.limit} "
            f"(active={limit.active}), not an active limit of 1: "
            f"`prefect gcl update {name} --limit 1 --enable`"
        )
    try:
        # strict: a limit deleted meanwhile is an error, not a silent "no lock"
        with concurrency(name, occupy=1, timeout_seconds=timeout, strict=True):
            yield
    except TimeoutError as err:
        if isinstance(err, LockTimeout):
            raise
        raise LockTimeout(
            f"registry lock {name!r} on {os.environ['PREFECT_API_URL']}: still held after "
            f"{timeout:.0f}s: wait for the other promotion, or free its slot "
            f"(`prefect gcl inspect {name}`)"
        ) from None


@contextlib.contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive lock on ``path`` (``filelock``: ``flock`` on POSIX), created if missing."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(path, timeout=timeout).acquire()
    except Timeout:
        raise LockTimeout(
            f"registry lock {path}: still held by another process after "
            f"{timeout:g}s: wait for it or remove a stale lock holder"
        ) from None
    with lock:
        yield


def hold(model: str | None, lock_file: Path, is_sqlite: bool, timeout: float):  # noqa: ANN201
    """The lock for ``model``'s registry writes: Prefect's when :func:`uses_prefect`, else the
    file lock on ``lock_file``. ``model=None`` (a store-wide write) always takes the file lock."""
    if model is not None and uses_prefect(is_sqlite):
        return prefect_lock(model, timeout)
    return file_lock(lock_file, timeout)
