"""Check exported files against eager PyTorch: onnxruntime and the TorchScript module run on
fresh random batches of several batch sizes; outputs are compared element by element."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trainer.export.errors import ExportError, ExportMismatch
from trainer.export.inputs import (
    batch_size,
    flatten_outputs,
    input_names,
    module_device,
    resolve_sample,
)
from trainer.export.jit_warning import jit_quietly
from trainer.export.metadata import read_metadata
from trainer.export.modes import eval_mode
from trainer.export.report import OutputStats, VerifyReport, compare

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # onnxruntime reads it at import


def verify(
    module: nn.Module,
    onnx_path: str | os.PathLike | None = None,
    torchscript_path: str | os.PathLike | None = None,
    samples: int = 3,
    batch_sizes: Sequence[int] = (1, 7, 64),
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
    input_sample: Any = None,
) -> VerifyReport:
    """Check exported files against eager ``module`` on fresh random batches.

    Runs ``max(samples, len(batch_sizes))`` batches cycling through ``batch_sizes`` (only the
    sample's own batch size for an ONNX file exported with ``dynamic_batch=False``), built from
    the shapes and dtypes of ``input_sample`` / ``module.example_input_array`` (floats: normal;
    integers: uniform in the sample's [min, max]; bools: random). onnxruntime runs on the
    CPUExecutionProvider. An element passes when ``|export - eager| <= atol + rtol * |eager|``.
    Returns the :class:`VerifyReport`; raises :class:`ExportMismatch` naming the backend, the
    output and its errors when any output fails.
    """
    what = f"verify({type(module).__name__})"
    if onnx_path is None and torchscript_path is None:
        raise ExportError(
            f"{what}: nothing to check; pass onnx_path=... and/or torchscript_path=..."
        )
    args, kw = resolve_sample(module, input_sample, what)
    names = input_names(module, args, kw)
    sample = [*args, *kw.values()]
    device = module_device(module)
    try:
        sample_batch = batch_size(args, kw, what)
    except ExportError:  # inputs without a common batch dim: check at the sample's shapes
        sample_batch = None
    backends: dict[str, Any] = {}
    dynamic = {"onnx": True, "torchscript": True}
    if onnx_path is not None:
        backends["onnx"] = _ort_session(onnx_path)
        with contextlib.suppress(ExportError):
            dynamic["onnx"] = bool(read_metadata(onnx_path).get("dynamic_batch", True))
    if torchscript_path is not None:
        with jit_quietly():
            backends["torchscript"] = torch.jit.load(str(torchscript_path), map_location=device)
        backends["torchscript"].eval()

    plan: list[int | None]
    if sample_batch is None:  # no common batch dim: fresh values at the sample's shapes
        plan = [None] * max(samples, 1)
    else:
        sizes = list(batch_sizes) or [sample_batch]
        plan = [sizes[i % len(sizes)] for i in range(max(samples, len(sizes)))]
        if not all(dynamic[b] for b in backends) and sample_batch not in plan:
            plan.append(sample_batch)  # a fixed-batch export is checked at its own batch size
    report = VerifyReport(
        atol=atol,
        rtol=rtol,
        batch_sizes=sorted({b for b in plan if b is not None}),
        backends=list(backends),
    )
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(module), torch.no_grad():
        for bs in plan:
            inputs = [_random_like(t, bs, gen) for t in sample]
            ref_args = tuple(t.to(device) for t in inputs[: len(args)])
            ref_kw = {k: t.to(device) for k, t in zip(kw, inputs[len(args) :])}
            ref = dict(flatten_outputs(module(*ref_args, **ref_kw)))
            for backend, runner in backends.items():
                if not dynamic[backend] and bs is not None and bs != sample_batch:
                    continue
                per = report.stats.setdefault(backend, {})
                if backend == "onnx":
                    got = _run_ort(runner, dict(zip(names, inputs)), list(ref))
                else:
                    got = dict(flatten_outputs(runner(*ref_args, **ref_kw)))
                for name, r in ref.items():
                    stats = per.setdefault(name, OutputStats(backend=backend, output=name))
                    if name not in got:
                        stats.note = f"missing (has {sorted(got)})"
                        continue
                    compare(stats, got[name], r, bs, atol, rtol)
    _raise_on_failure(report, what)
    return report


def _raise_on_failure(report: VerifyReport, what: str) -> None:
    failures = report.failures()
    if not failures:
        return
    worst = max(failures, key=lambda s: (bool(s.note), s.max_abs))
    detail = worst.note or (
        f"max abs error {worst.max_abs:.3g}, max rel error {worst.max_rel:.3g} "
        f"({worst.mismatched} of {worst.numel} elements outside atol={report.atol:g} + "
        f"rtol={report.rtol:g}*|eager|, worst at batch {worst.worst_batch_size})"
    )
    others = [f"{s.backend}:{s.output}" for s in failures if s is not worst]
    raise ExportMismatch(
        f"{what}: {worst.backend} output {worst.output!r} differs from eager PyTorch: "
        f"{detail}"
        + (f"; also failing: {', '.join(others)}" if others else "")
        + ". Re-export after the last weight change, or check for train-mode-only layers "
        "or data-dependent control flow.",
        report,
        worst,
    )


def _random_like(t: Tensor, batch: int | None, gen: torch.Generator) -> Tensor:
    shape = list(t.shape)
    if batch is not None and shape:
        shape[0] = batch
    if t.dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if t.dtype.is_complex:
        return torch.randn(shape, generator=gen, dtype=t.dtype)
    # integers: stay inside the sample's range (token ids, class indices...)
    lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 1)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).to(t.dtype)


def _ort_session(path: str | os.PathLike) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run_ort(session: Any, inputs: dict[str, Tensor], ref_names: list[str]) -> dict[str, Any]:
    feed = {}
    for i in session.get_inputs():
        if i.name not in inputs:
            raise ExportError(
                f"ONNX input {i.name!r} is not among the module's inputs {sorted(inputs)}"
            )
        feed[i.name] = inputs[i.name].cpu().numpy()
    out_names = [o.name for o in session.get_outputs()]
    values = session.run(None, feed)
    if not set(ref_names) & set(out_names) and len(out_names) == len(ref_names):
        out_names = ref_names  # exported under other names: match by position
    return dict(zip(out_names, values))
