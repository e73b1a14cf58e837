"""trainflow's pipeline: the Prefect flows, the `trainflow` CLI and the team stack."""

# tasks/__init__ sets the offline hygiene env vars; import it before anything here imports
# prefect, mlflow or onnxruntime.
import tasks  # noqa: F401
