"""trainflow's pipeline: the config schema, the Prefect flow and the `trainflow` CLI."""

import os

# Offline hygiene, set before prefect / mlflow / onnxruntime are imported
# (../shared/STACK-NOTES.md).
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "ORT_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)
