"""Where a registration comes from: the code version (git commit) and the Prefect flow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding tasks/


def code_version() -> str:
    """The git commit of the trainflow source (``+dirty`` with uncommitted tracked changes),
    else ``trainflow==<package version>``."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        if commit:
            return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"trainflow=={version('trainflow')}"
    except Exception:  # noqa: BLE001
        return "trainflow==unknown"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(SOURCE_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def flow_run_id() -> str | None:
    """The Prefect flow run id when called inside a flow run (Prefect is not imported here)."""
    if "prefect" in sys.modules:
        try:
            from prefect.runtime import flow_run

            fid = flow_run.id
            if fid:
                return str(fid)
        except Exception:  # noqa: BLE001
            pass
    return os.environ.get("PREFECT__FLOW_RUN_ID") or None
