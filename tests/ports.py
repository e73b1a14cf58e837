"""A port number for a test to give a server it starts through a command line (``--port N``).

Bind, close, return the number: racy by nature (another process may bind the port first), which
a test may accept and production code may not; production code holds its ports until its server
answers (flows/tracking.py ``reserved_port``) or hands a bound socket over (``listening_socket``).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it; free until someone binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
