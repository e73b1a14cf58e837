"""Loading a registered model back: ``models:/<name>@<alias>`` as an onnxruntime session or the
TorchScript module stored with it."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

from tasks.registry.names import CHAMPION, ONNX_FILE, TAG_PREFIX, RegistryError, validate_model_name
from tasks.registry.versions import alias_version, client_for, store_uri
from trainer.loggers.mlflow_private import fluent


def download_version(
    name: str, alias: str, tracking_uri: str | None, dst: str
) -> tuple[Path, Any]:
    """Download ``models:/name@alias`` into ``dst``: (its local folder, the ModelVersion)."""
    validate_model_name(name)
    uri = store_uri(tracking_uri)
    mv = alias_version(client_for(uri), name, alias)
    if mv is None:
        raise RegistryError(
            f"registered model {name!r} has no {alias!r} alias in {uri}: register and promote "
            "a version first"
        )
    import mlflow.artifacts

    with fluent(uri):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}@{alias}", dst_path=dst, tracking_uri=uri
        )
    return Path(local), mv


def load_champion(
    name: str,
    *,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    providers: list[str] | None = None,
) -> Any:
    """An onnxruntime ``InferenceSession`` for ``models:/<name>@champion`` (CPU by default).

    The version it came from is in the session's ``trainflow_version`` attribute.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="trainflow-champion-") as tmp:
        local, mv = download_version(name, alias, tracking_uri, tmp)
        onnx_file = local / ONNX_FILE  # an ONNX-flavour version; a pyfunc one holds it here:
        if not onnx_file.is_file():
            onnx_file = local / "artifacts" / ONNX_FILE
        sess = ort.InferenceSession(
            str(onnx_file), providers=providers or ["CPUExecutionProvider"]
        )
    with contextlib.suppress(AttributeError):
        sess.trainflow_version = str(mv.version)
    return sess


def load_champion_torchscript(
    name: str,
    *,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    map_location: str = "cpu",
) -> Any:
    """The TorchScript module stored with ``models:/<name>@champion`` (``torch.jit.load``)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="trainflow-champion-") as tmp:
        local, mv = download_version(name, alias, tracking_uri, tmp)
        ts_name = mv.tags.get(f"{TAG_PREFIX}torchscript_file")
        if not ts_name:
            raise RegistryError(
                f"{name} version {mv.version} has no TorchScript file: register it with "
                "torchscript_path="
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ts_file = local / "extra_files" / ts_name
            if not ts_file.is_file():  # a pyfunc version keeps it among its artifacts
                ts_file = local / "artifacts" / ts_name
            return torch.jit.load(str(ts_file), map_location=map_location)
