"""The two ONNX exporters of torch 2.13, each called the one way trainflow calls it.

- ``legacy``: the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``). It traces
  ``forward`` once with the sample; ≈ 0.1 s for a small model. torch says it will be removed.
- ``dynamo``: torch.export + onnxscript (``dynamo=True``, torch's default). It captures
  control flow on shapes and ops the tracer cannot, at 1–7 s even for a small model (its
  first call in a process imports and warms up torch.export, onnxscript and its optimizer).

Which one a model gets is decided in :mod:`trainer.export.choice`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.export.inputs import BATCH_AXIS, dynamic_shapes
from trainer.export.modes import jit_scripting

# torch.onnx's internal chatter, hidden (the user's own warnings are not).
_TORCH_NOISE = (
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*The axis name: .* will not be used.*",
    r"You are using the legacy TorchScript-based ONNX export.*",
    r"The feature will be removed.*",
    r"The tensor attributes .*_flat_weights.* were assigned during export.*",  # nn.LSTM
    r"_check_is_size will be removed.*",
)


# torch.onnx.export options only the dynamo exporter reads
DYNAMO_ONLY = ("optimize", "report", "verify", "custom_translation_table")


@dataclass
class OnnxJob:
    """One ONNX export in progress: what every step of ``to_onnx`` reads."""

    module: nn.Module
    args: tuple[Tensor, ...]
    kwargs: dict[str, Tensor]
    input_names: list[str]
    output_names: list[str]
    sample_tensors: list[Tensor]  # the caller's sample, before any batch doubling
    opset: int | None
    dynamic_batch: bool
    external_data: bool
    exporter: str  # "auto" | "dynamo" | "legacy"
    extra: dict[str, Any]  # further torch.onnx.export keyword arguments
    metadata: dict[str, str]  # the caller's extra metadata entries
    what: str  # "to_onnx(ClassName)", the prefix of every message


def hide_torch_noise() -> None:
    """Add ignore filters for torch.onnx's chatter (call inside ``warnings.catch_warnings``)."""
    for pattern in _TORCH_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def quiet_torch_onnx() -> Iterator[None]:
    """Hide torch.onnx's internal chatter (not the user's warnings)."""
    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg.level
    reg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            hide_torch_noise()
            yield
    finally:
        reg.setLevel(level)


def export_dynamo(job: OnnxJob, f: Path) -> None:
    """Write ``f`` with the dynamo-based exporter."""
    shapes = None
    if job.dynamic_batch:
        batch = torch.export.Dim(BATCH_AXIS)
        shapes = dynamic_shapes(job.module, job.args, job.kwargs, batch)
    torch.onnx.export(
        job.module,
        job.args,
        str(f),
        kwargs=job.kwargs or None,
        dynamo=True,
        verbose=False,
        input_names=job.input_names,
        output_names=job.output_names,
        opset_version=job.opset,
        external_data=job.external_data,
        dynamic_shapes=shapes,
        **job.extra,
    )


def export_legacy(job: OnnxJob, f: Path) -> None:
    """Write ``f`` with the TorchScript-based exporter (a trace of ``forward``)."""
    dynamic_axes = None
    if job.dynamic_batch:
        tensors = [*job.args, *job.kwargs.values()]
        dynamic_axes = {n: {0: BATCH_AXIS} for n, t in zip(job.input_names, tensors) if t.dim() > 0}
    legacy_args: tuple[Any, ...] = (*job.args, job.kwargs) if job.kwargs else tuple(job.args)
    extra = {k: v for k, v in job.extra.items() if k not in DYNAMO_ONLY}  # choice.py checks
    with jit_scripting(job.module):
        torch.onnx.export(
            job.module,
            legacy_args,
            str(f),
            dynamo=False,
            verbose=False,
            input_names=job.input_names,
            output_names=job.output_names,
            opset_version=job.opset,
            dynamic_axes=dynamic_axes,
            **extra,
        )
