"""trainflow stages: one Prefect task per pipeline stage, typed inputs to typed outputs."""

# flows/__init__ sets the offline hygiene env vars; import it before any stage imports
# prefect, mlflow or onnxruntime.
import flows  # noqa: F401
