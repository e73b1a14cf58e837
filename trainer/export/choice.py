"""Which ONNX exporter a model gets, and why (the reason goes into the file's metadata).

``exporter="auto"`` (the default) tries the fast TorchScript-based exporter first and keeps
its file only when the trace raised no warning at all: a tracer warning (a tensor read into a
Python bool/float/int, an LSTM's batch) means the graph may be specialised to the sample, so
the model goes to the dynamo exporter, which captures such code or refuses it. A plain stack
of layers (the demo MLP) thus exports in ≈ 0.1 s instead of 1–7 s. When the legacy exporter
fails (an op it cannot translate), or the call needs what only dynamo does (external data
for weights > 1.5 GiB or ``external_data=True``; ``optimize``, ``report``, ``verify``,
``custom_translation_table``), dynamo is used; when dynamo fails after a warned trace,
the traced file is used with an :class:`ExportFallbackWarning` (``verify`` then checks it on
fresh batch sizes). ``exporter="legacy"`` / ``"dynamo"`` use that one alone.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from trainer.export.errors import ExportError, ExportFallbackWarning
from trainer.export.exporters import (
    DYNAMO_ONLY,
    OnnxJob,
    export_dynamo,
    export_legacy,
    hide_torch_noise,
    quiet_torch_onnx,
)
from trainer.export.failures import export_failure, summary

EXPORTERS = ("auto", "dynamo", "legacy")


@dataclass
class Choice:
    """The exporter whose file is kept, the folder holding that file, and why."""

    exporter: str  # "legacy" | "dynamo"
    folder: Path
    reason: str
    fallback_reason: str | None = None  # why dynamo failed, when a warned trace was kept


def run_exporters(job: OnnxJob, workdir: Path, name: str) -> Choice:
    """Export ``job`` into ``workdir/<exporter>/<name>`` as the policy above says."""
    dynamo_only = [k for k in DYNAMO_ONLY if k in job.extra]
    if job.exporter == "legacy" and (job.external_data or dynamo_only):
        what = ", ".join(dynamo_only) or "external data"
        raise ExportError(
            f"{job.what}: exporter='legacy' cannot take {what} (dynamo exporter only); pass "
            "exporter='dynamo' (or 'auto'), or leave it out"
        )
    with quiet_torch_onnx():
        if job.exporter != "auto":
            return _only(job, job.exporter, workdir, name, f"requested: exporter={job.exporter!r}")
        if job.external_data:  # the TorchScript-based exporter has no external_data option
            reason = "auto: external data (only the dynamo exporter writes it)"
            return _only(job, "dynamo", workdir, name, reason)
        if dynamo_only:  # honoured, not dropped: only dynamo reads them
            reason = f"auto: dynamo-only options given ({', '.join(dynamo_only)})"
            return _only(job, "dynamo", workdir, name, reason)
        return _auto(job, workdir, name)


def _only(job: OnnxJob, exporter: str, workdir: Path, name: str, reason: str) -> Choice:
    """One exporter, no alternative: its failure is the error."""
    folder = workdir / exporter
    folder.mkdir()
    try:
        (export_legacy if exporter == "legacy" else export_dynamo)(job, folder / name)
    except Exception as e:  # torch raises many types here; all mean "did not export"
        errors = (None, e) if exporter == "legacy" else (e, None)
        raise export_failure(job.what, job.opset, *errors) from e
    return Choice(exporter, folder, reason)


def _auto(job: OnnxJob, workdir: Path, name: str) -> Choice:
    """The fast path if its trace is clean, else dynamo, else the warned trace."""
    legacy_dir, dynamo_dir = workdir / "legacy", workdir / "dynamo"
    legacy_dir.mkdir()
    legacy_err: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning, also ones already shown once
        hide_torch_noise()
        try:
            export_legacy(job, legacy_dir / name)
        except Exception as e:
            legacy_err = e
    if legacy_err is None and not caught:
        reason = "auto: the TorchScript-based exporter traced the model without a warning"
        return Choice("legacy", legacy_dir, reason)
    why = (
        f"the TorchScript-based exporter failed ({summary(legacy_err)})"
        if legacy_err is not None
        else f"the TorchScript-based exporter warned ({_warning_line(caught[0])})"
    )
    dynamo_dir.mkdir()
    try:
        export_dynamo(job, dynamo_dir / name)
        return Choice("dynamo", dynamo_dir, _stable(f"auto: {why}"))
    except Exception as e:
        if legacy_err is not None:
            raise export_failure(job.what, job.opset, e, legacy_err) from e
        dynamo_why = summary(e)
    warnings.warn(
        f"{job.what}: {why} and the dynamo exporter failed ({dynamo_why}); using the traced "
        "export (torch.onnx.export(dynamo=False)): check it with verify() at several batch sizes",
        ExportFallbackWarning,
        stacklevel=4,
    )
    reason = _stable(f"auto: {why}; the dynamo exporter failed ({dynamo_why})")
    return Choice("legacy", legacy_dir, reason, fallback_reason=dynamo_why)


def _warning_line(w: warnings.WarningMessage) -> str:
    first = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
    return f"{w.category.__name__}: {first[:200]}"


def _stable(text: str) -> str:
    """The reason without object addresses, so that it (and the file) is the same every run."""
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
