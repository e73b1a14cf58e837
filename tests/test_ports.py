"""Ports of the servers we start are held, not guessed: a reserved port is refused to everyone
but a server binding it the way servers do (SO_REUSEADDR), and a taken port is one line."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.tracking import listening_socket, reserved_port
from trainer.loggers.mlflow_store import TrackingUnreachable


def _server_socket(port: int) -> socket.socket:
    """Bind and listen like uvicorn and PostgreSQL do."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_reserved_port_is_refused_to_others_and_open_to_the_server() -> None:
    with reserved_port() as port:
        with socket.socket() as other, pytest.raises(OSError) as info:
            other.bind(("127.0.0.1", port))  # what a racing "free port" user would do
        assert info.value.errno == errno.EADDRINUSE
        handed_out = set()
        for _ in range(200):  # the OS does not offer it as a free port meanwhile
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                handed_out.add(s.getsockname()[1])
        assert port not in handed_out
        with _server_socket(port):  # the server we start binds it
            pass
    with socket.socket() as after:  # released at the end of the block
        after.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_refused_with_the_fix() -> None:
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(TrackingUnreachable, match=f"port {port} on 127.0.0.1 is taken"):
            with reserved_port("127.0.0.1", port):
                pass


def test_stack_up_on_a_taken_port_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path))
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, [
            "stack", "up", "--database-url", "postgresql://u:p@127.0.0.1:1",
            "--prefect-port", str(port), "--mlflow-port", "0", "--no-worker",
        ])
    assert result.exit_code == 1, result.output
    assert f"error: stack: port {port} on 127.0.0.1 is taken" in result.output
    assert not (tmp_path / ".trainflow" / "stack" / "state.json").exists()
