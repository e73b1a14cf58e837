"""MLflow servers we start: ``trainflow ui`` on the embedded store, and ``mlflow server`` for
tests and the team stack. The store itself (URIs, reachability, experiments) is
``trainer/loggers/mlflow_store.py``. The ports of the servers we start are held from the moment
they are chosen (:func:`reserved_port`, :func:`listening_socket`), never picked and let go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainer.loggers.mlflow_store import (
    ARTIFACTS_DIR,
    TrackingUnreachable,
    http_health,
    resolve_tracking_uri,
    sqlite_path,
)

# --------------------------------------------------------------------------- server / UI


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Hold a TCP port for a server we start: yields its number (``port``, or one the OS picks
    for 0), bound here until the block ends; end it once the server answers.

    Binding, closing and passing the number on (a "free port") is a race: anyone may take the
    port before the server binds it. Here the port stays bound (SO_REUSEADDR, not listening)
    while the server starts: the OS hands it to no one asking for a free port and a plain
    ``bind`` of it fails, yet the server, which sets SO_REUSEADDR itself (uvicorn under
    ``mlflow server`` and ``prefect server``; PostgreSQL), binds and listens on it. Port 0 or an
    inherited socket would need each server's support: PostgreSQL takes neither, and MLflow and
    Prefect run uvicorn in a grandchild (no fd passed through) and report the port only in logs.
    A port something already listens on is refused with the fix.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
        try:
            s.bind((host, port))
        except OSError as exc:
            raise TrackingUnreachable(
                f"port {port} on {host} is taken ({exc.strerror}): stop what uses it or choose "
                "another port"
            ) from None
        yield int(s.getsockname()[1])


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a port the OS picks on ``host`` and listening: for a server that takes
    an inherited socket (``uvicorn --fd``), so the port is bound once, by us, and handed over."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(128)
    return s


def _server_cmd(uri: str, host: str, port: int, workers: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    db = sqlite_path(uri)
    if db is not None:
        dest = db.parent / ARTIFACTS_DIR
        dest.mkdir(parents=True, exist_ok=True)
        cmd += ["--artifacts-destination", str(dest)]
    return cmd


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


@dataclass
class MLflowServer:
    """A running ``mlflow server`` child process; ``stop()`` terminates it (and its workers)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's process group, then kill what is left after ``timeout``."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, 15)
        except (ProcessLookupError, PermissionError):
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, 9)
            self.process.wait(5)


def start_server(
    tracking_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    startup_timeout: float = 90.0,
    log_path: str | os.PathLike[str] | None = None,
) -> MLflowServer:
    """Start ``mlflow server`` on the (embedded) store and wait until ``/health`` answers.

    Bound to 127.0.0.1 unless told otherwise; one worker, job execution off (STACK-NOTES).
    """
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with reserved_port(host, port or 0) as bound:  # held until /health answers
        return _start_and_wait(uri, host, bound, workers, startup_timeout, log_path)


def _start_and_wait(
    uri: str,
    host: str,
    port: int,
    workers: int,
    startup_timeout: float,
    log_path: str | os.PathLike[str] | None,
) -> MLflowServer:
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    from flows.children import die_with_parent

    proc = subprocess.Popen(
        _server_cmd(uri, host, port, workers),
        env=_server_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - ends with us even after a SIGKILL
    )
    if log_path:
        out.close()  # type: ignore[union-attr]
    url_host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::1", "localhost") else host
    server = MLflowServer(proc, f"http://{url_host}:{port}", Path(log_path) if log_path else None)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = ""
            if log_path:
                tail = Path(log_path).read_text(errors="replace")[-2000:]
            raise TrackingUnreachable(
                f"mlflow server exited with code {proc.returncode} before answering: {tail}"
            )
        try:
            http_health(server.url, timeout=2.0)
            return server
        except TrackingUnreachable:
            time.sleep(0.3)
    server.stop()
    raise TrackingUnreachable(
        f"mlflow server on {server.url} did not answer /health within {startup_timeout:.0f}s"
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on (mlflow server would exit 0 without a word)."""
    with reserved_port(host, port):
        pass


@contextlib.contextmanager
def running_server(**kwargs: object) -> Iterator[MLflowServer]:
    """Context manager around :func:`start_server` that always stops the server."""
    server = start_server(**kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def run_ui(
    host: str = "127.0.0.1",
    port: int = 5000,
    tracking_uri: str | None = None,
    workers: int = 1,
) -> int:
    """Start the MLflow UI on the (embedded) store, print its URL, serve until Ctrl-C.

    Returns the server's exit code (0 after Ctrl-C).
    """
    uri = resolve_tracking_uri(tracking_uri)
    if shutil.which("mlflow") is None and not _has_mlflow_module():
        raise TrackingUnreachable("mlflow is not installed: pip install 'mlflow>=3.17,<4'")
    server = start_server(uri, host=host, port=port, workers=workers)
    print(f"MLflow UI: {server.url}  (store: {uri}; Ctrl-C to stop)", flush=True)
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _has_mlflow_module() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None
