"""What an exported file says about itself, and where: the ONNX ``metadata_props`` (keys
``trainflow.*``), the TorchScript archive (extra file ``trainflow.json``) and a JSON sidecar
``<path>.json`` beside either.

Entries: format, model class, trainflow and torch version, exporter (and for ONNX why that
one), input names / shapes / dtypes, output names, plus what the caller added.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.export.errors import ExportError
from trainer.export.jit_warning import jit_quietly
from trainer.fileio import atomic_write_text

TORCHSCRIPT_KEY = "trainflow.json"  # the extra file inside a TorchScript archive
ONNX_PREFIX = "trainflow."  # the metadata_props keys of an ONNX model


def base_metadata(module: nn.Module, fmt: str, exporter: str) -> dict[str, Any]:
    """The entries every export carries."""
    cls = type(module)
    return {
        "format": fmt,
        "model_class": f"{cls.__module__}:{cls.__qualname__}",
        "trainflow_version": _trainflow_version(),
        "torch_version": torch.__version__,
        "exporter": exporter,
    }


def _trainflow_version() -> str:
    try:
        from importlib.metadata import version

        return version("trainflow")
    except Exception:  # not installed (running from a bare checkout)
        return "unknown"


def to_json(metadata: dict[str, Any]) -> str:
    """The metadata as the sidecar and the TorchScript archive hold it."""
    return json.dumps(metadata, indent=2) + "\n"


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def write_sidecar(path: Path, metadata: dict[str, Any]) -> Path:
    """Write the sidecar of ``path`` atomically; returns its path."""
    return atomic_write_text(sidecar_path(path), to_json(metadata))


def stamp_onnx(model: Any, metadata: dict[str, Any]) -> None:
    """Replace an ``onnx.ModelProto``'s metadata_props by ``trainflow.<key>`` entries."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = f"{ONNX_PREFIX}{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The trainflow metadata of an exported file (ONNX or TorchScript), else its sidecar."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        meta: dict[str, Any] = {}
        for p in model.metadata_props:
            if p.key.startswith(ONNX_PREFIX):
                key = p.key.removeprefix(ONNX_PREFIX)
                try:
                    meta[key] = json.loads(p.value)
                except ValueError:
                    meta[key] = p.value
        if meta:
            return meta
    else:
        extra = {TORCHSCRIPT_KEY: ""}
        with contextlib.suppress(Exception), jit_quietly():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            if extra[TORCHSCRIPT_KEY]:
                return json.loads(extra[TORCHSCRIPT_KEY])
    sidecar = sidecar_path(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    raise ExportError(f"{path}: no trainflow metadata in the file and no sidecar {sidecar.name}")
