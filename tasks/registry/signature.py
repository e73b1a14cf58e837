"""What a registered model takes and answers: its MLflow signature and input example."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.registry.names import RegistryError

_COLUMN_TYPES = {"string": "string", "large_string": "string", "bool": "boolean"}


def column_signature(schema: Mapping[str, Any]) -> Any:
    """The MLflow signature of a model taking the schema's named columns (numbers as double,
    category columns as their source type) and answering ``prediction`` in the label's type;
    the ``probabilities`` parameter asks for one probability column per class."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [
        ColSpec(_COLUMN_TYPES.get(f["dtype"], "double") if f.get("categories") else "double",
                f["name"])
        for f in schema["features"]
    ]
    classes = schema.get("classes")
    if schema["task"] == "regression":
        out = "double"
    elif classes and all(isinstance(c, str) for c in classes):
        out = "string"
    else:
        out = "long"
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([ColSpec(out, "prediction")]),
        params=ParamSchema([ParamSpec("probabilities", "boolean", False)]),
    )


def tensor_signature(onnx_file: Path, input_example: Any = None) -> tuple[Any, Any]:
    """(signature, example) of an ONNX model taking one tensor: inferred from the example run
    through onnxruntime; default example: zeros of the input's shape, dynamic dims set to 1."""
    from mlflow.models import infer_signature

    example = as_numpy(input_example) if input_example is not None else default_input_example(
        onnx_file
    )
    return infer_signature(example, run_onnx(onnx_file, example)), example


def default_input_example(onnx_path: Path) -> Any:
    """Zeros of the ONNX model's single input (dynamic dims set to 1)."""
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise RegistryError(
            f"{onnx_path}: {len(inputs)} graph inputs; pass input_example= (a numpy array for a "
            "single input or a dict name -> array)"
        )
    t = inputs[0].type.tensor_type
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
    return np.zeros(shape, dtype=dtype)


def as_numpy(example: Any) -> Any:
    """A tensor, array or mapping of them as numpy arrays."""
    import numpy as np

    if hasattr(example, "detach"):
        return example.detach().cpu().numpy()
    if isinstance(example, Mapping):
        return {k: as_numpy(v) for k, v in example.items()}
    return np.asarray(example)


def run_onnx(onnx_file: Path, example: Any) -> Any:
    """The ONNX model's output(s) on ``example`` (onnxruntime, CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = example if isinstance(example, dict) else {names[0]: example}
    try:
        out = sess.run(None, feed)
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(
            f"{onnx_file}: onnxruntime could not run the input example ({exc}): pass an "
            "input_example= matching the model's inputs"
        ) from None
    return out[0] if len(out) == 1 else {o.name: v for o, v in zip(sess.get_outputs(), out)}
