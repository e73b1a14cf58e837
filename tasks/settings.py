"""Where the pipeline keeps its state, and the environment Prefect must see before it is imported.

Everything the embedded defaults write lands in ``<project>/.trainflow/``: Prefect's home (its
SQLite database for the ephemeral API), persisted task results (the cache), stage outputs
(prepared data, checkpoints, exports) and the MLflow store (trainer/loggers/mlflow_store.py).
The project folder is ``$TRAINFLOW_PROJECT_DIR`` when set, else the current working directory.

A user's own Prefect server is used when ``PREFECT_API_URL`` (or a Prefect profile) says so; we
never override that. ``PREFECT_HOME`` is only set when the user has not set it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

STATE_DIR = ".trainflow"


def project_dir() -> Path:
    """The project folder holding ``.trainflow/``: ``$TRAINFLOW_PROJECT_DIR`` or the CWD."""
    return Path(os.environ.get("TRAINFLOW_PROJECT_DIR") or os.getcwd()).resolve()


def home_dir() -> Path:
    """``<project>/.trainflow``: the pipeline's state folder."""
    return project_dir() / STATE_DIR


def stage_dir(stage: str, home: Path | None = None) -> Path:
    """Where a stage writes its content-addressed outputs: ``<home>/stages/<stage>``."""
    return (home or home_dir()) / "stages" / stage


def results_dir(home: Path | None = None) -> Path:
    """Prefect's persisted task results (the cross-run cache): ``<home>/results``."""
    return (home or home_dir()) / "results"


def configure_environment(home: Path | None = None) -> Path:
    """Point Prefect's home into the project (unless set) and quiet it; returns the home.

    Call before ``import prefect``: Prefect reads its settings once, when first imported.
    """
    home = (home or home_dir()).resolve()
    if "prefect" not in sys.modules:
        if "PREFECT_HOME" not in os.environ:
            (home / "prefect").mkdir(parents=True, exist_ok=True)  # sqlite needs the folder
            os.environ["PREFECT_HOME"] = str(home / "prefect")
        # Cold start of the ephemeral API runs migrations (~11 s here); the default 20 s is tight
        # on a loaded 2-core machine.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # Results Prefect persists are JSON, never pickles: the project folder is data.
        os.environ.setdefault("PREFECT_RESULTS_DEFAULT_SERIALIZER", "json")
    return home


_HELD: dict[Path, object] = {}  # project home -> this process's lock on it


def hold_project_lock(home: Path | None = None) -> None:
    """Take ``<home>/pipeline.lock`` for the rest of this process (waiting, and saying so, while
    another process holds it). The kernel releases it when the process ends, however it ends.

    Two pipeline runs at once in one project trained into the same stage folder and registered
    the same model twice; the CLI takes it before starting Prefect's local API on the project's
    database, so a second ``trainflow run`` touches nothing until the first has exited.
    """
    from filelock import FileLock, Timeout

    home = (home or home_dir()).resolve()
    if home in _HELD:
        return
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home / "pipeline.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"another trainflow run is using {home.parent}; waiting for it to finish",
              file=sys.stderr, flush=True)
        lock.acquire()
    _HELD[home] = lock


@contextlib.contextmanager
def project_lock(home: Path | None = None) -> Iterator[None]:
    """The project lock for a block (a no-op where this process already holds it)."""
    home = (home or home_dir()).resolve()
    if home in _HELD:
        yield
        return
    hold_project_lock(home)
    try:
        yield
    finally:
        _HELD.pop(home).release()  # type: ignore[attr-defined]
