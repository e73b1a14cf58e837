"""One sweep process per study.

Two ``trainflow sweep`` on the same study at once would ask TPE for trials from interleaved
histories (neither run's sequence is the seeded one) and both would promote a best trial. So a
sweep holds a lock named after its study for as long as it runs, and a second one refuses in one
line. Where the lock lives follows the study's storage:

- SQLite (the default, one machine): a file lock beside the database, ``<db>.<study>.lock``;
- PostgreSQL (the team stack, several machines): a session-level advisory lock on that server,
  held on a connection of its own;
- any other URL: a file lock in the project's ``.trainflow/`` (this machine only).

Either kind is released by the kernel or the server when the process ends, however it ends: a
killed sweep never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.settings import home_dir
from tasks.types import StageError

_HELD: dict[tuple[str, str], Any] = {}  # (storage, study) -> this process's lock


class StudyBusy(StageError):
    """Another process is running the same study."""


def _refusal(name: str, where: str) -> StudyBusy:
    return StudyBusy(
        f"sweep {name}: another process is running this study ({where}); wait for it to "
        "finish, or give this sweep its own sweep.study_name"
    )


def _file_lock(path: Path, name: str) -> Any:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _refusal(name, f"lock {path}") from None
    return lock


def _advisory_lock(storage: str, name: str) -> Any:
    """A PostgreSQL advisory lock keyed by the study name, on a connection kept open."""
    import sqlalchemy as sa

    key = int.from_bytes(hashlib.sha256(f"trainflow-sweep:{name}".encode()).digest()[:8],
                         "big", signed=True)
    engine = sa.create_engine(storage, poolclass=sa.pool.NullPool)
    conn = engine.connect()
    got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
    conn.commit()
    if not got:
        conn.close()
        engine.dispose()
        raise _refusal(name, "advisory lock on its PostgreSQL database")
    return conn  # closing the connection releases the lock


def acquire(storage: str, name: str) -> bool:
    """Take the study's lock for the rest of this process (or until :func:`release`);
    raise :class:`StudyBusy` at once if another process holds it. False: already held here."""
    if (storage, name) in _HELD:
        return False
    if storage.startswith("sqlite:///") and "?" not in storage:
        db = Path(storage.removeprefix("sqlite:///"))
        lock = _file_lock(db.with_name(f"{db.name}.{name}.lock"), name)
    elif storage.startswith("postgresql"):
        lock = _advisory_lock(storage, name)
    else:
        lock = _file_lock(home_dir() / f"sweep-{name}.lock", name)
    _HELD[(storage, name)] = lock
    return True


def release(storage: str, name: str) -> None:
    lock = _HELD.pop((storage, name), None)
    if lock is not None:
        (lock.release if hasattr(lock, "release") else lock.close)()


@contextlib.contextmanager
def study_lock(storage: str, name: str) -> Iterator[None]:
    """The study's lock for a block (a no-op where this process already holds it)."""
    took = acquire(storage, name)
    try:
        yield
    finally:
        if took:
            release(storage, name)
