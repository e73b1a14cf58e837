"""ONNX export: one self-contained ``.onnx`` file (weights inside) written atomically, with the
trainflow metadata in its ``metadata_props`` and in a ``<path>.json`` sidecar.

Weights too big for one protobuf (> ~1.5 GiB) go to a ``<path>.data`` side file. The exporter
is chosen per model (:mod:`trainer.export.choice`); which one and why is in the metadata.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.export.choice import EXPORTERS, Choice, run_exporters
from trainer.export.errors import ExportError, ExportFallbackWarning
from trainer.export.exporters import OnnxJob
from trainer.export.inputs import (
    batch_size,
    describe_inputs,
    input_names,
    module_device,
    output_names,
    resolve_sample,
    to_device,
)
from trainer.export.metadata import base_metadata, stamp_onnx, write_sidecar
from trainer.export.modes import eval_mode
from trainer.fileio import atomic_write, atomic_write_bytes

# Weights above this go to an external data side file (one protobuf is capped at 2 GiB).
EXTERNAL_DATA_BYTES = 1536 * 1024**2


@dataclass
class OnnxExport:
    """What :func:`to_onnx` wrote."""

    path: Path
    exporter: str  # "dynamo" | "legacy"
    opset: int
    input_names: list[str]
    output_names: list[str]
    metadata: dict[str, Any]
    sidecar: Path
    external_data: Path | None = None
    fallback_reason: str | None = None  # why dynamo failed when a warned trace was kept
    reason: str = ""  # why this exporter (also metadata["exporter_reason"])


def to_onnx(
    module: nn.Module,
    path: str | os.PathLike,
    input_sample: Any = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    **kwargs: Any,
) -> OnnxExport:
    """Export ``module`` to an ONNX file at ``path`` (atomically) and return what was written.

    ``input_sample`` defaults to ``module.example_input_array``. ``dynamic_batch`` makes dim 0
    of every input symbolic (``batch``). ``opset`` defaults to the exporter's own. Extra
    ``kwargs`` go to ``torch.onnx.export``; three are read here: ``exporter`` ("auto": chosen
    per model, see :mod:`trainer.export.choice`; "dynamo"; "legacy"), ``external_data``
    (default: only when the weights are too big for one file) and ``metadata`` (a dict of
    extra string entries). Raises :class:`UnsupportedOpError` naming the op when no exporter
    can translate it.
    """
    path = Path(path)
    what = f"to_onnx({type(module).__name__})"
    exporter = kwargs.pop("exporter", "auto")
    if exporter not in EXPORTERS:
        raise ExportError(
            f"{what}: exporter must be 'auto', 'dynamo' or 'legacy' (got {exporter!r})"
        )
    extra_meta = {str(k): str(v) for k, v in (kwargs.pop("metadata", None) or {}).items()}
    external_data = kwargs.pop("external_data", None)
    if external_data is None:
        size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        external_data = size > EXTERNAL_DATA_BYTES
    if not path.parent.is_dir():
        raise ExportError(f"{what}: folder {str(path.parent)!r} does not exist; create it first")

    args, kw = to_device(resolve_sample(module, input_sample, what), module_device(module))
    in_names = input_names(module, args, kw)
    sample_tensors = [*args, *kw.values()]
    if dynamic_batch and batch_size(args, kw, what) == 1:
        # torch.export specializes size-1 dims; export with a batch of 2 so the axis stays free.
        args = tuple(torch.cat([a, a]) if a.dim() else a for a in args)
        kw = {k: torch.cat([v, v]) if v.dim() else v for k, v in kw.items()}

    with eval_mode(module):
        with torch.no_grad():
            out_names = output_names(module(*args, **kw))
        job = OnnxJob(
            module=module,
            args=tuple(args),
            kwargs=dict(kw),
            input_names=in_names,
            output_names=out_names,
            sample_tensors=sample_tensors,
            opset=opset,
            dynamic_batch=dynamic_batch,
            external_data=bool(external_data),
            exporter=exporter,
            extra=kwargs,
            metadata=extra_meta,
            what=what,
        )
        # The exporters write to paths; they work in a scratch folder beside the target (never
        # seen as the target), and the chosen file is then written into place atomically.
        workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            choice = run_exporters(job, workdir, path.name)
            return _publish(job, choice, path)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _publish(job: OnnxJob, choice: Choice, path: Path) -> OnnxExport:
    """Stamp the metadata into the chosen file and write it (and any side file) at ``path``."""
    import onnx

    exported = choice.folder / path.name
    model = onnx.load(str(exported), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph_outputs = [o.name for o in model.graph.output]
    if graph_outputs != job.output_names:
        warnings.warn(
            f"{job.what}: ONNX outputs {graph_outputs} do not match the flattened eager outputs "
            f"{job.output_names}; keeping the exporter's names",
            ExportFallbackWarning,
            stacklevel=3,
        )
    graph_inputs = {i.name for i in model.graph.input}
    metadata: dict[str, Any] = {
        **base_metadata(job.module, "onnx", choice.exporter),
        "exporter_reason": choice.reason,
        "opset": opset,
        "dynamic_batch": job.dynamic_batch,
        "inputs": [
            d
            for d in describe_inputs(job.input_names, job.sample_tensors, job.dynamic_batch)
            if d["name"] in graph_inputs
        ],
        "outputs": graph_outputs,  # the eager names, or the exporter's where they differ
        **job.metadata,
    }
    stamp_onnx(model, metadata)
    # Side files (external data) first, then the model: the model never points at nothing.
    external = None
    for side in sorted(choice.folder.iterdir()):
        if side != exported:
            external = path.parent / side.name
            with open(side, "rb") as src, atomic_write(external) as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
    atomic_write_bytes(path, model.SerializeToString())
    return OnnxExport(
        path=path,
        exporter=choice.exporter,
        opset=opset,
        input_names=[d["name"] for d in metadata["inputs"]],
        output_names=graph_outputs,
        metadata=metadata,
        sidecar=write_sidecar(path, metadata),
        external_data=external,
        fallback_reason=choice.fallback_reason,
        reason=choice.reason,
    )

