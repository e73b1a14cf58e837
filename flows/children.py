"""Child processes that end with the command that started them, however it ends.

Normal exit, an exception, Ctrl-C, SIGTERM and SIGHUP are handled by the starter (``finally``
blocks and exit handlers stop its servers; the CLI turns SIGTERM/SIGHUP into an exception).
SIGKILL runs nothing in the starter, so each child also asks Linux for a signal when its parent
dies (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec by :func:`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process dies.
    None off Linux (no such call there; the starter's own stop handling still applies)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec
