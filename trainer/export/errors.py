"""What an export can raise or warn: one error family, two warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.export.report import OutputStats, VerifyReport


class ExportError(RuntimeError):
    """An export could not be produced (no sample, bad input, exporter failure)."""


class UnsupportedOpError(ExportError):
    """An operator of the model has no translation in the exporter(s) tried.

    ``op`` is the operator's name (``aten::linalg_svd``, ``mylib::op``...), ``None`` if the
    exporter's message did not name one.
    """

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.op = op


class ExportMismatch(ExportError):
    """An exported model's outputs differ from eager PyTorch beyond the tolerance.

    ``report`` is the full :class:`VerifyReport`; ``backend``, ``output``, ``max_abs`` and
    ``max_rel`` describe the worst failing output.
    """

    def __init__(self, message: str, report: VerifyReport, failure: OutputStats) -> None:
        super().__init__(message)
        self.report = report
        self.backend = failure.backend
        self.output = failure.output
        self.max_abs = failure.max_abs
        self.max_rel = failure.max_rel


class ExportFallbackWarning(UserWarning):
    """The exporter the model needed failed and the TorchScript-based one's trace, which warned
    that it may be specialised to the sample, was used instead (or the exporter renamed outputs)."""


class TorchScriptDeprecationWarning(DeprecationWarning):
    """TorchScript is deprecated upstream; trainflow shows this once per process."""
