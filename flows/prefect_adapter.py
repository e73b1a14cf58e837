"""Every private detail of Prefect that flows/ephemeral.py relies on, in one place.

flows/ephemeral.py starts Prefect's temporary local API the way Prefect itself does
(``SubprocessASGIServer._run_uvicorn_command`` in ``prefect/server/api/server.py``), but earlier
and without Prefect's in-process server import. That copies things Prefect does not promise to
keep:

* the server command: ``uvicorn --factory prefect.server.api.server:create_app`` with Prefect's
  flags, and the private ``PREFECT__SERVER_EPHEMERAL`` / ``PREFECT__SERVER_FINAL`` variables
  ``create_app`` reads (UI and services off, the app built once);
* the database's migration revision: Alembic's ``alembic_version`` table in ``prefect.db``.

These were read from Prefect :data:`PREFECT_VERSION` (the version constraints.txt pins).
:func:`check_version` refuses any other installed version in one line; the test
tests/pipeline/test_prefect_adapter.py fails when the installed Prefect no longer has the names
and behaviour copied here. Public settings (``PREFECT_API_URL`` through ``temporary_settings``,
the migration and flush settings) need no adapter but live here too, beside their use.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PREFECT_VERSION", "PrefectVersionError", "check_version", "db_revision",
           "heartbeats_if_configured", "installed_collections", "installed_version",
           "pointed_at", "server_command", "server_env"]

PREFECT_VERSION = "3.9.1"  # what the details below were read from; constraints.txt pins it

# What SubprocessASGIServer._run_uvicorn_command sets and create_app reads (private names).
PRIVATE_VARS = ("PREFECT__SERVER_EPHEMERAL", "PREFECT__SERVER_FINAL")
APP_FACTORY = "prefect.server.api.server:create_app"


class PrefectVersionError(RuntimeError):
    """The installed Prefect is not the one this adapter was checked against."""


def installed_version() -> str | None:
    """The installed Prefect's version, read without importing it (None: not installed)."""
    try:
        return importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_collections() -> list[str]:
    """``name==version`` of each installed Prefect collection (the ``prefect.collections``
    entry points, e.g. prefect-dask: their block types are registered at a server's start),
    read without importing them."""
    found = set()
    for ep in importlib.metadata.entry_points(group="prefect.collections"):
        dist = getattr(ep, "dist", None)
        found.add(f"{dist.name}=={dist.version}" if dist is not None else ep.value)
    return sorted(found)


def check_version() -> None:
    """Raise :class:`PrefectVersionError` (one line naming both versions and the way out)
    unless the installed Prefect is :data:`PREFECT_VERSION`."""
    found = installed_version()
    if found != PREFECT_VERSION:
        raise PrefectVersionError(
            f"flows/prefect_adapter.py copies private start-up details of prefect "
            f"{PREFECT_VERSION}, but prefect {found} is installed: install prefect=="
            f"{PREFECT_VERSION} (constraints.txt), or set TRAINFLOW_FAST_API=0 to let Prefect "
            "start its own API"
        )


def server_command(fd: int) -> list[str]:
    """Prefect's own command for its temporary API, serving on the listening socket ``fd``
    (bound to 127.0.0.1 by the caller, where Prefect passes ``--host 127.0.0.1 --port P``)."""
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise PrefectVersionError("prefect is not installed")
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent),
            "--factory", APP_FACTORY, "--fd", str(fd), "--log-level", "error", "--lifespan", "on"]


def server_env(base: dict[str, str], skip_migrations: bool) -> dict[str, str]:
    """The server's environment: ``base`` (the user's, which wins for public settings) with
    Prefect's private variables forced on, like Prefect's own start. ``skip_migrations``: the
    database is as a previous start with the same Prefect and collections left it, so neither
    the migration check nor the block-type registration (which imports every installed
    collection first, prefect-dask and dask's distributed: ≈ 0.4 s) runs again."""
    env = {
        "PREFECT_UI_ENABLED": "0",
        # Task-run states and events reach the database from the server's event queues,
        # flushed every 5 s by default (or when a batch is full; the task-run recorder's batch
        # is one event): flushed each second, less is left for the flush at shutdown, which
        # EphemeralAPI.stop waits for. Whole seconds: Prefect truncates the interval to an int
        # (0.5 is a busy loop).
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
        **base,
        **dict.fromkeys(PRIVATE_VARS, "1"),
    }
    if skip_migrations:
        env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
        env["PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION"] = "false"  # its check imports them
    return env


def db_revision(db: Path) -> str | None:
    """The Alembic revision Prefect's migrations left in ``db`` (None: no such database)."""
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("select version_num from alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


@contextlib.contextmanager
def pointed_at(api_url: str) -> Iterator[None]:
    """Prefect's client settings pointed at ``api_url`` for the block (public settings).

    No UI link (the temporary API serves none) and no flow-run heartbeats: they let a
    long-lived server mark a run whose process died as crashed, but this API dies with the
    process; and Prefect joins the heartbeat thread, which sleeps in 1 s steps, at the end of
    every flow run (≈ 0.5 s).
    """
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"api.url": api_url, "ui_url": "",
                                     "flows.heartbeat_frequency": None}):
        yield


@contextlib.contextmanager
def heartbeats_if_configured() -> Iterator[None]:
    """Flow-run heartbeats for the block only when the user configured them (public settings:
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, a profile or ``prefect.toml``).

    Prefect 3.9 sends one every 180 s unless told otherwise. They serve one thing, an
    automation the user sets up to mark a silent run crashed (who does so sets the frequency,
    as Prefect's guide says); yet Prefect joins the heartbeat thread, which sleeps in 1 s steps,
    at the end of every flow run: ≈ 0.5 s of a 3 s run against a server.
    """
    from prefect.settings import get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield
