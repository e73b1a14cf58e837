"""Export a model to ONNX and TorchScript, and check the export against eager PyTorch.

Works on any ``nn.Module``; ``TrainModule.to_onnx`` / ``to_torchscript`` delegate here.

- :func:`to_onnx` (:mod:`.onnx`) writes one ONNX file; the exporter is chosen per model
  (:mod:`.choice`: torch's TorchScript-based exporter for a model it traces without a
  warning, ≈ 0.1 s; the dynamo exporter otherwise) and recorded in the file's metadata.
- :func:`to_torchscript` (:mod:`.torchscript`) scripts (default) or traces the module.
- :func:`verify` (:mod:`.verification`) runs eager torch, onnxruntime and the TorchScript
  module on fresh random batches of several batch sizes and raises :class:`ExportMismatch`
  past the tolerance; :class:`VerifyReport` (:mod:`.report`) holds the errors.
- :func:`read_metadata` (:mod:`.metadata`) reads back what each file says about itself.

Both exports run with the module in eval mode (:mod:`.modes`) and put its previous mode back.
Files are written atomically (:mod:`trainer.fileio`): a failed export leaves nothing behind and
never a half-written file; the same model gives the same bytes (:mod:`.determinism`). Inputs
are named after ``forward``'s parameters, outputs flattened and named as :mod:`.inputs` says;
the input sample (``input_sample``, else ``module.example_input_array``) is a Tensor, a
tuple/list of Tensors or a dict of Tensors; with ``dynamic_batch=True`` dim 0 of every input is
the symbolic axis ``batch``.
"""

from __future__ import annotations

from trainer.export.errors import (
    ExportError,
    ExportFallbackWarning,
    ExportMismatch,
    TorchScriptDeprecationWarning,
    UnsupportedOpError,
)
from trainer.export.inputs import output_names
from trainer.export.metadata import read_metadata
from trainer.export.onnx import OnnxExport, to_onnx
from trainer.export.report import OutputStats, VerifyReport
from trainer.export.torchscript import to_torchscript
from trainer.export.verification import verify

__all__ = [
    "ExportError",
    "ExportFallbackWarning",
    "ExportMismatch",
    "OnnxExport",
    "OutputStats",
    "TorchScriptDeprecationWarning",
    "UnsupportedOpError",
    "VerifyReport",
    "output_names",
    "read_metadata",
    "to_onnx",
    "to_torchscript",
    "verify",
]
