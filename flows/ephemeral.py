"""Prefect's temporary local API for one CLI process, started early and without waste.

With no ``PREFECT_API_URL``, Prefect starts a temporary API on the first client call: it imports
the whole server (FastAPI app, database layer: ≈ 5 s on 2 cores) into the calling process only to
launch ``uvicorn prefect.server.api.server:create_app`` as a subprocess, waits for it (≈ 7-10 s:
the subprocess imports the same server, then re-runs the database migration check, ≈ 3 s, on
every start), and only then runs the flow.

:func:`start` launches that same subprocess, with the same command and flags as Prefect's
``SubprocessASGIServer`` (UI off, ephemeral services only, bound to 127.0.0.1), before the CLI
imports prefect, torch and mlflow, so the server starts on the other core while they load.
The migration check and the block-type registration are skipped when the database is at the
revision that a previous start by the same Prefect version, with the same Prefect collections
installed, left there (recorded in ``$PREFECT_HOME/trainflow-api.json``); a new or changed
database, or a new collection, gets both as usual. The CLI then runs the flow with
``PREFECT_API_URL`` pointing at it (Prefect's ``temporary_settings``), and stops the server at
exit, as Prefect does.

The private Prefect details this copies (the server command, ``PREFECT__SERVER_*`` variables, the
migration table) live in flows/prefect_adapter.py, checked against the pinned Prefect version.
Worth it: bench/RESULTS.md, "CLI latency (issue 14)", has the seconds it saves per run.

Not used (Prefect's own start applies) when ``PREFECT_API_URL`` is set, when ephemeral mode is
turned off, when a ``prefect.toml`` / ``[tool.prefect]`` / profile may configure Prefect, when
prefect is already imported, or with ``TRAINFLOW_FAST_API=0``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flows import prefect_adapter as adapter
from flows.children import die_with_parent
from flows.tracking import listening_socket
from trainer.fileio import atomic_write_text

__all__ = ["EphemeralAPI", "start"]

MARKER = "trainflow-api.json"
_RECORD_TIMEOUT_S = 5.0  # at most this long for the server to record the last task-run states
_FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the API: no proxy
_PREFECT_DB_VARS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def _off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def _prefect_configured_elsewhere(home: Path) -> bool:
    """Whether Prefect settings may come from files we do not read (then Prefect decides)."""
    cwd = Path.cwd()
    if (cwd / "prefect.toml").exists() or (home / "profiles.toml").exists():
        return True
    if os.environ.get("PREFECT_PROFILE") or os.environ.get("PREFECT_PROFILES_PATH"):
        return True
    pyproject = cwd / "pyproject.toml"
    with contextlib.suppress(OSError):
        if pyproject.exists() and "[tool.prefect" in pyproject.read_text(errors="replace"):
            return True
    return False


@dataclass
class EphemeralAPI:
    """A started ``uvicorn prefect.server.api.server:create_app`` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    home: Path
    migrated: bool  # False: the migration check was skipped (database already current)
    started_at: float = field(default_factory=time.monotonic)
    started_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())
    healthy_after: float | None = None
    last_used: float | None = None

    @property
    def api_url(self) -> str:
        """The REST API's URL (what ``PREFECT_API_URL`` takes)."""
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float | None = None) -> None:
        """Block until ``/api/health`` answers 200; raise ``RuntimeError`` naming the fix."""
        if self.healthy_after is not None:
            return
        if timeout is None:
            timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
                            or 90)
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"Prefect's local API exited with code {code} while starting (port "
                    f"{self.port}, PREFECT_HOME {self.home}); run `prefect server start` to see "
                    "why, or set TRAINFLOW_FAST_API=0 to let Prefect start it"
                )
            try:
                with _LOOPBACK.open(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        self.healthy_after = time.monotonic() - self.started_at
                        if self.migrated:
                            self._record_revision()
                        return
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"Prefect's local API did not answer within {timeout:.0f} s: raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a loaded machine"
        )

    def _record_revision(self) -> None:
        """After a start that ran the migrations and registered the block types: the database
        is current for this Prefect and these collections."""
        revision = adapter.db_revision(self.home / "prefect.db")
        version = adapter.installed_version()
        if revision and version:
            with contextlib.suppress(OSError):  # no marker: the next start migrates again
                atomic_write_text(self.home / MARKER, json.dumps({
                    "prefect": version, "revision": revision,
                    "collections": adapter.installed_collections()}))

    @contextlib.contextmanager
    def use(self) -> Iterator[str]:
        """Wait until healthy, then point Prefect at this API for the block."""
        self.wait()
        try:
            with adapter.pointed_at(self.api_url):
                yield self.api_url
        finally:
            self.last_used = time.monotonic()

    def stop(self) -> None:
        """Terminate the server (then kill it after 5 s), as Prefect's own stop does, once the
        task-run states of the flow runs it served are in its database (:meth:`recorded`)."""
        proc = self.process
        if proc.poll() is None:
            if self.last_used is not None:
                self.recorded()
            proc.terminate()  # its event persister writes what it still holds as it stops
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def recorded(self, timeout: float = _RECORD_TIMEOUT_S) -> bool:
        """Wait until no task run of a flow run started through this API lacks a final state.

        Prefect's client sends task-run states as events (its exit handlers send the last
        ones, before ours run); the server writes them to the database as each arrives (its
        task-run recorder's batch size is 1). A server stopped before that loses them: the
        run's stages would show as running forever. False when ``timeout`` passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self._unfinished_task_runs():
                    return True
            except (urllib.error.URLError, OSError, TimeoutError, ValueError):
                pass  # the server is busy or gone: retry until the deadline
            if time.monotonic() >= deadline or self.process.poll() is not None:
                return False
            time.sleep(0.05)

    def _unfinished_task_runs(self) -> list[str]:
        """Ids of the task runs, in flow runs started since this API started, not yet in a final
        state."""
        flow_runs = self._read_all("/flow_runs/filter", {
            "flow_runs": {"start_time": {"after_": self.started_utc}}})
        if not flow_runs:
            return []
        task_runs = self._read_all("/task_runs/filter", {
            "flow_runs": {"id": {"any_": [r["id"] for r in flow_runs]}}})
        return [t["id"] for t in task_runs if (t.get("state") or {}).get("type") not in _FINAL]

    def _read_all(self, path: str, body: dict) -> list[dict]:
        """Every object a ``.../filter`` endpoint returns, page by page."""
        out: list[dict] = []
        while True:
            page = {**body, "offset": len(out), "limit": 200}
            req = urllib.request.Request(f"{self.api_url}{path}", json.dumps(page).encode(),
                                         {"Content-Type": "application/json"})
            with _LOOPBACK.open(req, timeout=5) as resp:
                got = json.loads(resp.read())
            out += got
            if len(got) < 200:
                return out


def _migrations_current(home: Path) -> bool:
    try:
        marker = json.loads((home / MARKER).read_text())
    except (OSError, ValueError):
        return False
    version = adapter.installed_version()
    return bool(
        version
        and marker.get("prefect") == version
        and marker.get("collections") == adapter.installed_collections()
        and marker.get("revision")
        and adapter.db_revision(home / "prefect.db") == marker["revision"]
    )


def start() -> EphemeralAPI | None:
    """Launch Prefect's temporary API now (call before importing prefect); None when Prefect
    should decide itself (see the module docstring). Stopped at interpreter exit."""
    if "prefect" in sys.modules or _off("TRAINFLOW_FAST_API") or os.environ.get("PREFECT_API_URL"):
        return None
    if _off("PREFECT_SERVER_EPHEMERAL_ENABLED") or _off("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        return None
    if any(os.environ.get(v) for v in _PREFECT_DB_VARS) or not os.environ.get("PREFECT_HOME"):
        return None
    home = Path(os.environ["PREFECT_HOME"])
    if _prefect_configured_elsewhere(home) or adapter.installed_version() is None:
        return None
    adapter.check_version()  # the private details below were read from the pinned version
    home.mkdir(parents=True, exist_ok=True)
    current = _migrations_current(home)
    sock = listening_socket("127.0.0.1")  # bound once, here; uvicorn serves on it (--fd)
    port = sock.getsockname()[1]
    env = adapter.server_env(dict(os.environ), skip_migrations=current)
    # Ends with this process even when it is SIGKILLed (no exit handler runs then).
    with sock:
        proc = subprocess.Popen(adapter.server_command(sock.fileno()), env=env,  # noqa: PLW1509
                                pass_fds=(sock.fileno(),), preexec_fn=die_with_parent())
    api = EphemeralAPI(proc, port, home, migrated=not current)
    atexit.register(api.stop)
    return api
