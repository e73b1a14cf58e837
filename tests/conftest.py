"""Test-wide settings: offline hygiene before any library is imported, an isolated home, and
one Prefect API for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Set before prefect / mlflow / onnxruntime are imported anywhere in the test session
# (see ../shared/STACK-NOTES.md: without them they phone home or write into ~).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

# The MLflow store template (flows/tracking.py) and Prefect's home are made once per test session
# in a temp folder, never in the user's ~/.cache or ~/.prefect.
if "TRAINFLOW_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TRAINFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="trainflow-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TRAINFLOW_CACHE_DIR"], True)
os.environ.setdefault("PREFECT_HOME", os.path.join(os.environ["TRAINFLOW_CACHE_DIR"], "prefect"))


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One real Prefect API (a local server on a temp database) for the whole session; yields
    its URL. Flows run in this process report to it, and so do the ``trainflow`` subprocesses
    given ``api=`` (test_predict_project.trainflow): each then skips starting Prefect's
    temporary API of its own (≈ 4 s a run). Tests about that embedded start pass no ``api``."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):  # stops its server at session end
        yield str(PREFECT_API_URL.value())
