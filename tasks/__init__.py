"""trainflow stages: one Prefect task per pipeline stage, typed inputs to typed outputs."""

import os

# Offline hygiene, set before prefect / mlflow / onnxruntime are imported
# (../shared/STACK-NOTES.md). Here rather than in flows/ because tasks/ sits below flows/ and
# every entry point (the CLI, a flow, a stage imported on its own) passes through this package.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "ORT_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)
