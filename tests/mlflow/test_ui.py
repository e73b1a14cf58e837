"""`trainflow ui`: the real command starts the MLflow UI on the embedded store (the working
folder's .trainflow/), bound to 127.0.0.1, prints the URL, serves it, and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ui_process import printed_url

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 150  # mlflow server answers in ~7 s on a quiet machine; far more under load



def _command() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "trainflow"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "flows.cli"]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses in LISTEN state on ``port`` (Linux /proc/net/tcp*)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            if len(addr) == 8:  # IPv4, little-endian hex
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
            else:
                words = [bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
                found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local test server
        return resp.status, resp.read().decode("utf-8", "replace")


def test_trainflow_ui_serves_the_embedded_store_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "TRAINFLOW_PROJECT_DIR")
    }
    env["PYTHONPATH"] = str(REPO)
    repo_state = REPO / ".trainflow" / "mlflow.db"
    repo_mtime = repo_state.stat().st_mtime_ns if repo_state.exists() else None
    proc = subprocess.Popen(
        [*_command(), "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        url, out = printed_url(proc, deadline)
        url = url.rstrip("/") if url else url
        assert url is not None, f"no URL printed (exit code {proc.poll()}):\n{out}"
        assert url == f"http://localhost:{port}", out

        # the printed URL answers (the UI page) within the timeout
        status, body = 0, ""
        while time.monotonic() < deadline:
            try:
                status, body = _get(url + "/")
                if status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        assert status == 200, f"{url} did not answer 200 within {STARTUP_S} s:\n{out}"
        assert "mlflow" in body.lower()
        assert _get(url + "/health")[0] == 200

        # bound to the loopback address only
        if Path("/proc/net/tcp").exists():
            assert _listening_addresses(port) == {"127.0.0.1"}

        # on the embedded store of the working folder, never the repository's
        assert (tmp_path / ".trainflow" / "mlflow.db").is_file()
        if repo_mtime is not None:
            assert repo_state.stat().st_mtime_ns == repo_mtime

        # Ctrl-C stops the command and the server with it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out
        gone = time.monotonic() + 15  # server workers may take a moment after the command
        while _listening_addresses(port) and time.monotonic() < gone:
            time.sleep(0.2)
        assert _listening_addresses(port) == set()
        with pytest.raises((urllib.error.URLError, OSError)):
            _get(url + "/health", timeout=3)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
