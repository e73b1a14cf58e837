"""Team mode: ``trainflow stack up|down|status`` runs the shared servers on one machine.

One command starts, on 127.0.0.1 unless ``--host`` says otherwise:

1. PostgreSQL: a cluster initialised under ``<project>/.trainflow/stack/pg`` (or a database the
   user names with ``--database-url``), listening on 127.0.0.1 and a unix socket in its folder;
2. ``prefect server start`` on it (database ``prefect``);
3. ``mlflow server`` on it (database ``mlflow``), artifacts proxied into
   ``<project>/.trainflow/stack/artifacts``, so clients on other machines upload through it;
4. a ``process`` work pool (one run at a time) and one ``prefect worker`` on it.

``up`` waits until each piece answers, writes ``.trainflow/stack/state.json`` (pids, URLs) and
prints the two environment lines that point ``trainflow run`` / ``serve`` at the stack. ``down``
stops every process it started (its whole process group) and the cluster; ``status`` shows each
piece. Every server runs in its own session, so it outlives the ``up`` command.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.tracking import TrackingUnreachable, reserved_port
from tasks.settings import home_dir
from trainer.fileio import atomic_write

app = typer.Typer(
    help="Team mode: PostgreSQL + Prefect server + MLflow server + a worker, on this machine.",
    no_args_is_help=True,
)

PG_BIN = Path(os.environ.get("TRAINFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
POOL = "trainflow"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StackError(RuntimeError):
    """A piece of the stack could not be started or stopped; the message names the fix."""


# --------------------------------------------------------------------------- paths and state


def stack_dir() -> Path:
    """``<project>/.trainflow/stack``: the cluster, artifacts, logs and the state file."""
    return home_dir() / "stack"


def _state_path() -> Path:
    return stack_dir() / "state.json"


def read_state() -> dict[str, Any] | None:
    """The running stack's state (``up`` wrote it), or None when no stack is up here."""
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None


def _write_state(state: dict[str, Any]) -> None:
    with atomic_write(_state_path(), "w") as f:
        os.fchmod(f.fileno(), 0o600)  # it holds the database password: the owner's only
        json.dump(state, f, indent=2)


def _start_time(pid: int) -> str | None:
    """The process's start time (from /proc): tells our process from a later one with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(piece: dict[str, Any]) -> bool:
    """Whether the process recorded for ``piece`` still runs (same pid, same start time)."""
    pid = piece.get("pid")
    return bool(pid) and _start_time(pid) is not None and _start_time(pid) == piece.get("started")


# --------------------------------------------------------------------------- PostgreSQL


def _as_postgres() -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-800:]
        raise StackError(f"stack: {what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _pg_start(pg: Path, port: int) -> str:
    """Initialise (first time) and start the cluster in ``pg``; returns the database password."""
    data, pwfile = pg / "data", pg / "password"
    pg.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres", "postgres")
        os.chmod(pg, 0o700)
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(pg)])
        if probe.returncode != 0:
            raise StackError(
                f"stack: the postgres user cannot reach {pg}: make its parent folders "
                "traversable (chmod o+x) or pass --database-url postgresql://..."
            )
    if not (data / "PG_VERSION").exists():
        password = secrets.token_urlsafe(18)
        with atomic_write(pwfile, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        # TCP connections need the password; the socket (in a folder only postgres can enter)
        # is trusted, for pg_ctl and createdb.
        _run([*_as_postgres(), str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
              "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}",
              "-E", "UTF8"], "initdb")
    password = pwfile.read_text().strip()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {pg}"
    _run([*_as_postgres(), str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(pg / "pg.log"),
          "-o", opts, "-w", "-t", "60", "start"], "pg_ctl start")
    for db in ("prefect", "mlflow"):
        exists = _run([*_as_postgres(), str(PG_BIN / "psql"), "-h", str(pg), "-p", str(port),
                       "-U", "postgres", "-tAc", f"select 1 from pg_database where datname='{db}'"],
                      "psql")
        if not exists.strip():
            _run([*_as_postgres(), str(PG_BIN / "createdb"), "-h", str(pg), "-p", str(port),
                  "-U", "postgres", db], f"createdb {db}")
    return password


def _pg_stop(pg: Path) -> None:
    data = str(pg / "data")
    running = subprocess.run([*_as_postgres(), str(PG_BIN / "pg_ctl"), "-D", data, "status"],
                             capture_output=True).returncode == 0  # 3: not running (stale pid)
    if running:
        _run([*_as_postgres(), str(PG_BIN / "pg_ctl"), "-D", data, "-m", "fast",
              "-w", "-t", "60", "stop"], "pg_ctl stop")


# --------------------------------------------------------------------------- servers


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> dict[str, Any]:
    """Start ``cmd`` in its own session (it outlives ``up``; ``down`` stops its whole group)."""
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return {"pid": proc.pid, "started": _start_time(proc.pid), "log": str(log)}


def _wait_healthy(name: str, piece: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(piece):
            tail = Path(piece["log"]).read_text(errors="replace")[-1500:]
            raise StackError(f"stack: {name} exited while starting; its log ends:\n{tail}")
        if _http_ok(piece["health"]):
            return
        time.sleep(0.3)
    raise StackError(f"stack: {name} did not answer {piece['health']} within {timeout:.0f} s "
                     f"(log: {piece['log']})")


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "DO_NOT_TRACK": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}.items():
        env.setdefault(k, v)
    # a user's own server settings would point the pieces elsewhere
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(k, None)
    return env


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", *LOOPBACK) else host


def _mlflow_allowed_hosts(host: str) -> str:
    """MLflow's default Host headers (loopback, private IPs) plus this machine's names, so
    other machines reach it by name too (a user's MLFLOW_SERVER_ALLOWED_HOSTS wins)."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn()} | ({host} - {"0.0.0.0", "::"})
    return ",".join([*get_default_allowed_hosts(), *(f"{n},{n}:*" for n in sorted(names))])


def up(host: str = "127.0.0.1", prefect_port: int = 4200, mlflow_port: int = 5000,
       pg_port: int = 0, database_url: str | None = None, worker: bool = True,
       timeout: float = 180.0) -> dict[str, Any]:
    """Start the stack (see the module docstring) and return its state; on a failure, stop what
    was started and raise :class:`StackError`."""
    if read_state() is not None:
        raise StackError(f"stack: already up here ({_state_path()}): "
                         "`trainflow stack status`, or `trainflow stack down` first")
    root = stack_dir()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"host": host, "project": str(home_dir().parent), "pieces": {}}
    ports = contextlib.ExitStack()  # each port held from here until its server answers
    try:
        if database_url is None:
            pg_port = ports.enter_context(reserved_port("127.0.0.1", pg_port))
            state["pg"] = {"dir": str(root / "pg"), "port": pg_port}
            _write_state(state)  # from here on, `down` can clean up even if `up` dies
            password = _pg_start(root / "pg", pg_port)  # returns once it accepts connections
            database_url = f"postgresql://postgres:{password}@127.0.0.1:{pg_port}"
        parts = urllib.parse.urlsplit(database_url)
        if not parts.scheme.startswith("postgresql") or not parts.netloc:
            raise StackError(f"--database-url: not a postgresql://user:pw@host:port URL: "
                             f"{database_url!r}")
        server = parts.netloc  # the databases are ours: 'prefect' and 'mlflow'
        _write_state(state)
        for port in (prefect_port, mlflow_port):  # the port a user named, held or refused
            ports.enter_context(reserved_port(host, port))
        env = _base_env()
        h = _url_host(host)
        api = f"http://{h}:{prefect_port}/api"
        # MLflow answers 403 to Host headers it does not know: loopback is known as localhost
        mlflow_url = f"http://{'localhost' if h == '127.0.0.1' else h}:{mlflow_port}"
        home = root / "prefect-home"
        home.mkdir(exist_ok=True)
        prefect_env = dict(env, PREFECT_HOME=str(home),
                           PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{server}/prefect")
        p = _spawn("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", host,
                               "--port", str(prefect_port)], prefect_env, logs)
        state["pieces"]["prefect"] = {**p, "url": api, "health": f"{api}/health"}
        _write_state(state)
        artifacts = root / "artifacts"
        artifacts.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"postgresql+psycopg://{server}/mlflow", "--serve-artifacts",
               "--artifacts-destination", str(artifacts), "--host", host,
               "--port", str(mlflow_port), "--workers", "1"]
        if host not in LOOPBACK and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
            cmd += ["--allowed-hosts", _mlflow_allowed_hosts(host)]
        m = _spawn("mlflow", cmd, env, logs)
        state["pieces"]["mlflow"] = {**m, "url": mlflow_url, "health": f"{mlflow_url}/health"}
        _write_state(state)
        _wait_healthy("prefect", state["pieces"]["prefect"], timeout)
        _wait_healthy("mlflow", state["pieces"]["mlflow"], timeout)
        ports.close()
        if worker:
            client_env = dict(env, PREFECT_API_URL=api, MLFLOW_TRACKING_URI=mlflow_url,
                              TRAINFLOW_PROJECT_DIR=state["project"])
            prefect_cli = [sys.executable, "-m", "prefect", "--no-prompt", "work-pool"]
            existing = subprocess.run([*prefect_cli, "inspect", POOL], env=client_env,
                                      capture_output=True, timeout=120)
            if existing.returncode != 0:
                _run([*prefect_cli, "create", POOL, "--type", "process"], "work-pool create",
                     client_env)
            # a worker back after downtime runs every missed run: one at a time
            _run([*prefect_cli, "set-concurrency-limit", POOL, "1"], "work-pool limit",
                 client_env)
            w = _spawn("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool",
                                  POOL], client_env, logs)
            state["pieces"]["worker"] = {**w, "pool": POOL}
            _write_state(state)
    except BaseException as err:
        ports.close()
        with contextlib.suppress(Exception):
            down()
        if isinstance(err, TrackingUnreachable):  # a port is taken: the message names the fix
            raise StackError(f"stack: {err}") from None
        raise
    return state


def _stop_group(piece: dict[str, Any], grace: float = 15.0) -> None:
    """SIGTERM the piece's process group (twice: a Prefect worker only stops on the second, so
    the first gets one second), then SIGKILL."""
    if not alive(piece):
        return
    pid = piece["pid"]
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGTERM, grace),
                      (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when `up` ran in this process
            if not alive(piece):
                return
            time.sleep(0.1)
    raise StackError(f"stack: process {pid} did not stop after SIGKILL")


def down() -> list[str]:
    """Stop every piece the state file lists (worker first, the cluster last); returns names."""
    state = read_state()
    if state is None:
        return []
    stopped = []
    for name in ("worker", "mlflow", "prefect"):
        piece = state["pieces"].get(name)
        if piece is not None:
            _stop_group(piece)
            stopped.append(name)
    if "pg" in state:
        _pg_stop(Path(state["pg"]["dir"]))
        stopped.append("postgres")
    _state_path().unlink(missing_ok=True)
    return stopped


def status() -> list[tuple[str, str, str]]:
    """One row per piece: name, process state, health/URL."""
    state = read_state()
    if state is None:
        return []
    rows = []
    if "pg" in state:
        ok = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p",
                             str(state["pg"]["port"])], capture_output=True).returncode == 0
        rows.append(("postgres", "running" if ok else "down",
                     f"127.0.0.1:{state['pg']['port']} ({state['pg']['dir']})"))
    for name, piece in state["pieces"].items():
        run = f"pid {piece['pid']} " + ("alive" if alive(piece) else "gone")
        if "health" in piece:
            health = "healthy" if _http_ok(piece["health"]) else "not answering"
            rows.append((name, run, f"{piece['url']} {health}"))
        else:
            rows.append((name, run, f"pool {piece.get('pool', '')}"))
    return rows


def env_lines(state: dict[str, Any]) -> list[str]:
    """The environment that points ``trainflow run`` / ``serve`` (and prefect, mlflow) here."""
    return [f"export PREFECT_API_URL={state['pieces']['prefect']['url']}",
            f"export MLFLOW_TRACKING_URI={state['pieces']['mlflow']['url']}"]


# --------------------------------------------------------------------------- CLI


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("up")
def up_cmd(
    host: Annotated[str, typer.Option(help="Address the servers bind (0.0.0.0: every "
                                           "interface, for other machines)")] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(help="Prefect server port")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port")] = 5000,
    pg_port: Annotated[int, typer.Option(help="PostgreSQL port (0: a free one)")] = 0,
    database_url: Annotated[str | None, typer.Option(
        help="Your own PostgreSQL (postgresql://user:pw@host:port) with databases 'prefect' "
             "and 'mlflow'; none: a cluster under .trainflow/stack/pg")] = None,
    worker: Annotated[bool, typer.Option(help="Start a worker on the work pool")] = True,
) -> None:
    """Start the stack and print the environment lines that point trainflow at it."""
    try:
        state = up(host, prefect_port, mlflow_port, pg_port, database_url, worker)
    except StackError as err:
        _fail(str(err))
    typer.echo(f"stack up ({stack_dir()}); Prefect UI {state['pieces']['prefect']['url'][:-4]}")
    for line in env_lines(state):
        typer.echo(line)
    if host not in LOOPBACK:
        typer.echo(f"other machines: the same lines with {socket.getfqdn()} (or this machine's "
                   "address) in place of 127.0.0.1 / localhost")


@app.command("down")
def down_cmd() -> None:
    """Stop every piece of the stack started here (nothing is left running)."""
    try:
        stopped = down()
    except StackError as err:
        _fail(str(err))
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "no stack is up here")


@app.command("status")
def status_cmd() -> None:
    """Show each piece: its process and whether it answers."""
    rows = status()
    if not rows:
        typer.echo("no stack is up here")
        raise typer.Exit(1)
    for name, run, info in rows:
        typer.echo(f"{name:9} {run:18} {info}")
    state = read_state()
    if state is not None and "prefect" in state["pieces"]:
        for line in env_lines(state):
            typer.echo(line)
