"""Test-wide settings: offline hygiene before any library is imported, and an isolated home."""

import os

# Set before prefect / mlflow / onnxruntime are imported anywhere in the test session
# (see ../shared/STACK-NOTES.md: without them they phone home or write into ~).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

# The MLflow store template (flows/tracking.py) is made once per test session in a temp folder,
# never in the user's ~/.cache.
if "TRAINFLOW_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TRAINFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="trainflow-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TRAINFLOW_CACHE_DIR"], True)
