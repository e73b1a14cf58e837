"""Nothing left behind (issue 15): every process `trainflow run` and `trainflow ui` start ends
when they end, by SIGTERM or SIGKILL alike (checked by pid), and two runs in one project folder
wait for each other, train once and register one version.

One SIGTERM and one SIGKILL per process kind: SIGHUP takes SIGTERM's path (the same handler,
checked in-process below), so a third signal per kind would only repeat it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLOW_RUN = ["trainer.max_epochs=400", "model.kwargs={hidden: 16}", "registry.enabled=false"]

pytestmark = pytest.mark.slow


def _env(project: Path, api: str | None = None) -> dict[str, str]:
    """A user's environment in ``project``; the CLI starts its own Prefect API unless ``api``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "TRAINFLOW_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               TRAINFLOW_PROJECT_DIR=str(project), PYTHONPATH=str(REPO),
               TRAINFLOW_CACHE_DIR=os.environ.get("TRAINFLOW_CACHE_DIR", str(project / "cache")),
               OMP_NUM_THREADS="1")
    if api is not None:
        env["PREFECT_API_URL"] = api
    return env


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's wait is missing


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _check_nothing_left(proc: subprocess.Popen, sig: int, ready) -> None:
    """Once ``ready(kids)`` holds for the command's descendants, send ``sig``; then every one of
    them must be gone within 20 s."""
    kids: list[int] = []

    def started() -> bool:
        nonlocal kids
        kids = _descendants(proc.pid)
        return ready(kids)

    _wait_for(started, 240, "the command's child processes")
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    _wait_for(lambda: not any(_alive(p) for p in kids), 20,
              f"children {kids} to end after signal {sig}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_run_leaves_no_process_behind(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *sum((["--set", s] for s in SLOW_RUN), [])],
        env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # training has begun: the stage folder exists, and Prefect's local API is running
        _check_nothing_left(proc, sig, lambda kids: any("uvicorn" in _cmdline(p) for p in kids)
                            and (tmp_path / ".trainflow" / "stages" / "train").exists())
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_ui_leaves_no_process_behind(tmp_path: Path, sig: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)],
                            env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def listening(kids: list[int]) -> bool:
        with socket.socket() as c:
            return bool(kids) and c.connect_ex(("127.0.0.1", port)) == 0

    try:
        _check_nothing_left(proc, sig, listening)
        with socket.socket() as c:
            assert c.connect_ex(("127.0.0.1", port)) != 0  # nobody listens there any more
    finally:
        proc.kill()


def test_sighup_ends_the_cli_like_sigterm() -> None:
    """The CLI's handler turns SIGHUP, like SIGTERM, into the exception whose ``finally`` blocks
    stop the servers (what the subprocess tests above show for SIGTERM)."""
    from flows.cli import _exit_on_signals

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _exit_on_signals()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            with pytest.raises(KeyboardInterrupt, match=f"signal {int(sig)}"):
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises at the next bytecode; never reached
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_two_runs_in_one_folder_wait_train_once_and_register_one_version(
    tmp_path: Path, prefect_api: str
) -> None:
    """Two runs started while a third holds the project: both wait and say so (no stage runs),
    then, released together, they train once and register one version. The lock is the
    project's own, whichever Prefect API the runs report to: here the session's (the tests
    above keep the embedded one, whose processes they watch)."""
    import threading

    from mlflow import MlflowClient

    from tasks.settings import project_lock

    home = tmp_path / ".trainflow"
    small = ["trainer.max_epochs=2", "model.kwargs={hidden: 16}", "export.torchscript=false"]
    cmd = [sys.executable, "-m", "flows.cli", "run", *sum((["--set", s] for s in small), [])]
    lines: list[list[str]] = [[], []]
    with project_lock(home):  # a run in progress holds the project
        procs = [subprocess.Popen(cmd, env=_env(tmp_path, prefect_api), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
        readers = [threading.Thread(target=out.extend, args=(p.stdout,), daemon=True)
                   for out, p in zip(lines, procs)]
        for r in readers:
            r.start()

        def both_waiting() -> bool:
            return all(any("another trainflow run is using" in ln for ln in out) for out in lines)

        try:
            _wait_for(lambda: both_waiting() or any(p.poll() is not None for p in procs), 240,
                      "both runs to reach the lock")
            assert [p.poll() for p in procs] == [None, None], lines
            assert not (home / "stages").exists()  # they wait: no stage ran
        except BaseException:
            for p in procs:
                p.kill()
            raise
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for r in readers:
        r.join(timeout=10)
    assert codes == [0, 0], ["".join(out)[-3000:] for out in lines]
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    versions = client.search_model_versions("name = 'digits-mlp'")
    assert [str(v.version) for v in versions] == ["1"]
    exp = client.get_experiment_by_name("trainflow")
    assert len(client.search_runs([exp.experiment_id])) == 1  # one training run
    assert len(list((home / "stages" / "train").iterdir())) == 1
