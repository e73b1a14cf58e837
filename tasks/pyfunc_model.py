"""The registered model as an MLflow pyfunc, logged as code ("models from code").

MLflow stores this file with the model and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``): nothing is pickled. The answers come from
tasks/inference.py, the same code as ``trainflow predict``: named columns in, labels or values
out; the ``probabilities`` parameter adds one probability column per class.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from tasks.inference import Predictor
from tasks.schema import read_schema


class TrainflowModel(PythonModel):
    """ONNX model + dataset schema, answering like ``trainflow predict``."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(
            context.artifacts["onnx"], read_schema(context.artifacts["schema"])
        )

    # a DataFrame hint: MLflow takes the schema from the signature (named columns), not the hint
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        probabilities = bool((params or {}).get("probabilities", False))
        return self.predictor.predict(model_input, probabilities=probabilities)


mlflow.models.set_model(TrainflowModel())
