"""For tests that start an MLflow UI subprocess: the URL the process prints."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time


def _read_lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


def printed_url(proc: subprocess.Popen, deadline: float) -> tuple[str | None, str]:
    """Read ``proc``'s output until its ``MLflow UI: <url>`` line (or it exits, or
    ``deadline``, a ``time.monotonic()`` value, passes); return (url or None, the output's
    last 3000 characters)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    url = None
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.match(r"MLflow UI: (http://\S+)", line)
        if match:
            url = match.group(1)
    return url, "".join(seen)[-3000:]
