"""Content identities of what gets registered: a config's hash and an export's hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any


def config_hash(config: Any) -> str:
    """sha256 of a config's canonical JSON (mappings, dataclasses or pydantic models)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def export_content_hash(
    onnx_path: str | os.PathLike[str], torchscript_path: str | os.PathLike[str] | None = None
) -> str:
    """sha256 of the export: the ONNX model with its external weights, then the TorchScript file.

    The ONNX part hashes the loaded model proto, so it does not depend on whether the weights sit
    in the ``.onnx`` file or in a side ``.onnx.data`` file.
    """
    import onnx
    from onnx.external_data_helper import convert_model_from_external_data

    model = onnx.load(str(onnx_path))  # loads side-file weights into the tensors
    convert_model_from_external_data(model)  # and forgets where they came from
    try:
        from onnx.external_data_helper import _get_all_tensors

        tensors = list(_get_all_tensors(model))
    except ImportError:  # pragma: no cover - older/newer onnx
        tensors = list(model.graph.initializer)
    for tensor in tensors:  # an explicit DEFAULT location serialises differently from none
        if tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")
    h = hashlib.sha256(b"onnx\0")
    h.update(model.SerializeToString(deterministic=True))
    if torchscript_path is not None:
        h.update(b"\0torchscript\0")
        with open(torchscript_path, "rb") as f:  # streamed into the one digest (not a file hash:
            while block := f.read(1 << 20):  # the identities registered so far stay the same)
                h.update(block)
    return h.hexdigest()
