"""Export a model to ONNX and TorchScript, and check the export against eager PyTorch.

Works on any ``nn.Module``; ``TrainModule.to_onnx`` / ``to_torchscript`` delegate here.

- :func:`to_onnx` uses torch's dynamo-based exporter (``torch.export``) and falls back to the
  legacy TorchScript-based exporter with an :class:`ExportFallbackWarning`; which exporter and
  opset were used is recorded in the file. One self-contained ``.onnx`` file (weights inside)
  unless the weights are too big for one protobuf (> ~1.5 GiB): then a ``<path>.data`` side file.
- :func:`to_torchscript` scripts (default) or traces the module.
- :func:`verify` runs eager torch, onnxruntime and the TorchScript module on fresh random
  batches of several batch sizes and raises :class:`ExportMismatch` past the tolerance.

Both exports run with the module in eval mode (dropout off, batchnorm running stats) and put
its previous mode back afterwards. Files are written atomically (a temporary name in the same
folder, fsync, rename): a failed export leaves nothing behind and never a half-written file.
Each export carries metadata (model class, trainflow and torch version, input names / shapes /
dtypes, output names, exporter, opset): in the ONNX ``metadata_props`` (keys ``trainflow.*``),
in the TorchScript archive (extra file ``trainflow.json``) and in a JSON sidecar ``<path>.json``;
:func:`read_metadata` reads it back.

Input and output names. Inputs take the names of ``forward``'s parameters (``x``, ``mask``...;
a ``*args`` parameter gives ``args_0``, ``args_1``...). Outputs are flattened in order, named
by :func:`output_names`: a single tensor is ``output``; a tuple/list at the top is
``output_0``, ``output_1``...; dict keys are used as they are and nested containers are joined
with dots: ``{"logits": t, "aux": {"z": t}, "pair": (t, t)}`` gives ``logits``, ``aux.z``,
``pair.0``, ``pair.1``.

The input sample (``input_sample``, else ``module.example_input_array``) is a Tensor, a
tuple/list of Tensors (positional arguments) or a dict of Tensors (keyword arguments). With
``dynamic_batch=True`` dim 0 of every input is the symbolic axis ``batch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"
METADATA_KEY = "trainflow.json"  # TorchScript extra file name
# Weights above this go to an external data side file (one protobuf is capped at 2 GiB).
EXTERNAL_DATA_BYTES = 1536 * 1024**2


# --------------------------------------------------------------------------- errors / warnings
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
    """The dynamo exporter failed and the legacy TorchScript-based exporter was used."""


class TorchScriptDeprecationWarning(DeprecationWarning):
    """TorchScript is deprecated upstream; trainflow shows this once per process."""


# --------------------------------------------------------------------------- samples and names
def _resolve_sample(
    module: nn.Module, sample: Any, what: str
) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
    """Normalize an input sample into (args, kwargs) of tensors."""
    cls = type(module).__name__
    if sample is None:
        sample = getattr(module, "example_input_array", None)
    if sample is None:
        raise ExportError(
            f"{what}: no input sample for {cls}: pass input_sample=... (example_inputs=... for "
            f"to_torchscript) or set {cls}.example_input_array to a Tensor, a tuple of Tensors "
            "or a dict of named Tensors"
        )
    if isinstance(sample, Tensor):
        args: tuple[Any, ...] = (sample,)
        kwargs: dict[str, Any] = {}
    elif isinstance(sample, Mapping):
        args, kwargs = (), dict(sample)
    elif isinstance(sample, (tuple, list)):
        args, kwargs = tuple(sample), {}
    else:
        raise ExportError(
            f"{what}: input sample of {cls} is a {type(sample).__name__}; expected a Tensor, a "
            "tuple of Tensors or a dict of named Tensors"
        )
    for name, value in [*((str(i), a) for i, a in enumerate(args)), *kwargs.items()]:
        if not isinstance(value, Tensor):
            raise ExportError(
                f"{what}: input {name!r} of {cls} is a {type(value).__name__}; only Tensor inputs "
                "are supported (flatten nested inputs into separate forward() arguments)"
            )
    return args, kwargs


def _input_names(
    module: nn.Module, args: Sequence[Tensor], kwargs: Mapping[str, Tensor]
) -> list[str]:
    """Names of the flattened inputs: forward()'s parameter names in the order given."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names: list[str] = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    for i in range(len(args)):
        if i < len(positional):
            names.append(positional[i].name)
        elif var_pos is not None:
            names.append(f"{var_pos.name}_{i - len(positional)}")
        else:
            names.append(f"input_{i}")
    names.extend(kwargs)
    return names


def _dynamic_shapes(
    module: nn.Module, args: Sequence[Tensor], kwargs: Mapping[str, Tensor], batch: Any
) -> dict[str, Any]:
    """dynamic_shapes for torch.export, keyed by forward()'s parameter names."""
    params = list(inspect.signature(module.forward).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    var_kw = next((p for p in params if p.kind == p.VAR_KEYWORD), None)
    named = {p.name for p in params if p.kind != p.VAR_KEYWORD}

    def spec(t: Tensor) -> dict[int, Any] | None:
        return {0: batch} if t.dim() > 0 else None

    shapes: dict[str, Any] = {}
    extra: list[Any] = []
    for i, t in enumerate(args):
        if i < len(positional):
            shapes[positional[i].name] = spec(t)
        else:
            extra.append(spec(t))
    if extra and var_pos is not None:
        shapes[var_pos.name] = tuple(extra)
    var_kw_shapes = {}
    for name, t in kwargs.items():
        if name in named:
            shapes[name] = spec(t)
        else:
            var_kw_shapes[name] = spec(t)
    if var_kw_shapes and var_kw is not None:
        shapes[var_kw.name] = var_kw_shapes
    return shapes


def output_names(outputs: Any) -> list[str]:
    """Names of the tensors in ``outputs``, in flattening order (see the module docstring)."""
    return [name for name, _ in _flatten_outputs(outputs)]


def _flatten_outputs(outputs: Any) -> list[tuple[str, Tensor]]:
    if isinstance(outputs, Tensor):
        return [("output", outputs)]
    from torch.utils._pytree import tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(outputs)
    top_seq = isinstance(outputs, (tuple, list)) and not hasattr(outputs, "_fields")
    flat: list[tuple[str, Tensor]] = []
    for path, leaf in leaves:
        parts = [_key_str(k) for k in path]
        if top_seq and parts:
            parts[0] = f"output_{parts[0]}"
        name = ".".join(parts) or "output"
        if not isinstance(leaf, Tensor):
            if leaf is None:
                continue
            raise ExportError(
                f"output {name!r} is a {type(leaf).__name__}; exported models return Tensors "
                "(in tuples, lists, dicts or namedtuples) only"
            )
        flat.append((name, leaf))
    return flat


def _key_str(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _module_device(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _to(args: Sequence[Tensor], kwargs: Mapping[str, Tensor], device: torch.device):
    return tuple(a.to(device) for a in args), {k: v.to(device) for k, v in kwargs.items()}


def _batch_size(args: Sequence[Tensor], kwargs: Mapping[str, Tensor], what: str) -> int | None:
    sizes = {t.shape[0] for t in (*args, *kwargs.values()) if t.dim() > 0}
    if len(sizes) > 1:
        raise ExportError(
            f"{what}: dynamic_batch=True needs the same dim 0 (batch) on every input, got sizes "
            f"{sorted(sizes)}; pass dynamic_batch=False to export fixed shapes"
        )
    return sizes.pop() if sizes else None


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _jit_scripting(module: nn.Module) -> Iterator[None]:
    """Tell modules that torch.jit is walking them (Lightning's ``_jit_is_scripting`` flag).

    torch.jit reads every attribute of a module while scripting or tracing; a module whose
    properties raise when detached (``TrainModule.trainer``) checks this flag to return None.
    """
    flagged = [
        (m, m._jit_is_scripting) for m in module.modules() if hasattr(m, "_jit_is_scripting")
    ]
    for m, _ in flagged:
        m._jit_is_scripting = True
    try:
        yield
    finally:
        for m, before in flagged:
            m._jit_is_scripting = before


def _model_class(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def _trainflow_version() -> str:
    try:
        from importlib.metadata import version

        return version("trainflow")
    except Exception:  # not installed (running from a bare checkout)
        return "unknown"


def _describe_inputs(
    names: Sequence[str], tensors: Sequence[Tensor], dynamic_batch: bool
) -> list[dict[str, Any]]:
    out = []
    for name, t in zip(names, tensors):
        shape: list[int | str] = list(t.shape)
        if dynamic_batch and shape:
            shape[0] = BATCH_AXIS
        out.append({"name": name, "shape": shape, "dtype": str(t.dtype).removeprefix("torch.")})
    return out


# --------------------------------------------------------------------------- atomic writes
def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# --------------------------------------------------------------------------- ONNX
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
    fallback_reason: str | None = None


_TORCH_NOISE = (
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*The axis name: .* will not be used.*",
    r"You are using the legacy TorchScript-based ONNX export.*",
    r"The feature will be removed.*",
    r"The tensor attributes .*_flat_weights.* were assigned during export.*",  # nn.LSTM
    r"_check_is_size will be removed.*",
)


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Hide torch.onnx's internal chatter (not the user's warnings)."""
    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg.level
    reg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for pattern in _TORCH_NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        reg.setLevel(level)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.:]+)', overload='(\w+)'\)"),
    re.compile(r"operator '([\w.:]+)'"),
    re.compile(r"unrecognized namespace ([\w.:]+)"),
    re.compile(r"target=torch\.ops\.([\w.]+)\]"),
)


def _unsupported_op(*errors: BaseException | None) -> str | None:
    for err in errors:
        while err is not None:
            text = _ANSI.sub("", str(err))
            for pattern in _OP_PATTERNS:
                m = pattern.search(text)
                if m:
                    op = m.group(1)
                    if pattern is _OP_PATTERNS[0] and m.group(2) != "default":
                        op = f"{op}.{m.group(2)}"
                    if "::" not in op and "." in op:  # aten._linalg_svd.default -> aten::...
                        ns, _, rest = op.partition(".")
                        op = f"{ns}::{rest.removesuffix('.default')}"
                    return op
            err = err.__cause__ or err.__context__
    return None


def _summary(err: BaseException) -> str:
    """One or two lines saying why an exporter failed."""
    text = _ANSI.sub("", str(err))
    if "## Exception summary" in text:
        lines = [
            ln.strip()
            for ln in text.split("## Exception summary", 1)[1].splitlines()
            if ln.strip().startswith("<class")
        ]
        if lines:
            return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", lines[0])[:400]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {first[:400]}"


@dataclass
class _OnnxJob:
    """One ONNX export in progress: what every step of :func:`to_onnx` reads."""

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


def _export_dynamo(job: _OnnxJob, f: Path) -> None:
    dynamic_shapes = None
    if job.dynamic_batch:
        batch = torch.export.Dim(BATCH_AXIS)
        dynamic_shapes = _dynamic_shapes(job.module, job.args, job.kwargs, batch)
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
        dynamic_shapes=dynamic_shapes,
        **job.extra,
    )


def _export_legacy(job: _OnnxJob, f: Path) -> None:
    dynamic_axes = None
    if job.dynamic_batch:
        tensors = [*job.args, *job.kwargs.values()]
        dynamic_axes = {n: {0: BATCH_AXIS} for n, t in zip(job.input_names, tensors) if t.dim() > 0}
    legacy_args: tuple[Any, ...] = (*job.args, job.kwargs) if job.kwargs else tuple(job.args)
    extra = {
        k: v
        for k, v in job.extra.items()
        if k not in ("optimize", "report", "verify", "custom_translation_table")
    }
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
    ``kwargs`` go to ``torch.onnx.export``; three are read here: ``exporter`` ("auto": dynamo
    then legacy with a warning; "dynamo"; "legacy"), ``external_data`` (default: only when the
    weights are too big for one file) and ``metadata`` (a dict of extra string entries).
    Raises :class:`UnsupportedOpError` naming the op when no exporter can translate it.
    """
    path = Path(path)
    what = f"to_onnx({type(module).__name__})"
    exporter = kwargs.pop("exporter", "auto")
    if exporter not in ("auto", "dynamo", "legacy"):
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

    args, kw = _resolve_sample(module, input_sample, what)
    args, kw = _to(args, kw, _module_device(module))
    in_names = _input_names(module, args, kw)
    sample_tensors = [*args, *kw.values()]
    if dynamic_batch and _batch_size(args, kw, what) == 1:
        # torch.export specializes size-1 dims; export with a batch of 2 so the axis stays free.
        args = tuple(torch.cat([a, a]) if a.dim() else a for a in args)
        kw = {k: torch.cat([v, v]) if v.dim() else v for k, v in kw.items()}

    with _eval_mode(module):
        with torch.no_grad():
            out_names = output_names(module(*args, **kw))
        job = _OnnxJob(
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
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            tmp = tmpdir / path.name
            used, fallback_reason = _run_exporters(job, tmp)
            info = _finish_onnx(job, path, tmp, used)
            info.fallback_reason = fallback_reason
            return info
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _run_exporters(job: _OnnxJob, tmp: Path) -> tuple[str, str | None]:
    """Write ``tmp`` with dynamo, else legacy; return (exporter used, why dynamo failed)."""
    dynamo_err: BaseException | None = None
    with _quiet_torch_onnx():
        if job.exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(job, tmp)
                return "dynamo", None
            except Exception as e:  # torch raises many types here; all mean "did not export"
                dynamo_err = e
                if job.exporter == "dynamo":
                    raise _export_failure(job.what, job.opset, e, None) from e
        reason = _summary(dynamo_err) if dynamo_err else None
        if dynamo_err is not None:
            warnings.warn(
                f"{job.what}: the dynamo exporter failed ({reason}); falling back to the legacy "
                "TorchScript-based exporter (torch.onnx.export(dynamo=False))",
                ExportFallbackWarning,
                stacklevel=4,
            )
        for f in tmp.parent.iterdir():  # whatever the failed attempt left
            f.unlink()
        try:
            with _jit_scripting(job.module):
                _export_legacy(job, tmp)
        except Exception as e:
            raise _export_failure(job.what, job.opset, dynamo_err, e) from e
        return "legacy", reason


def _export_failure(
    what: str, opset: int | None, dynamo_err: BaseException | None, legacy_err: BaseException | None
) -> ExportError:
    op = _unsupported_op(legacy_err, dynamo_err)
    tried = []
    if dynamo_err is not None:
        tried.append(f"dynamo exporter: {_summary(dynamo_err)}")
    if legacy_err is not None:
        tried.append(f"legacy exporter: {_summary(legacy_err)}")
    opset_txt = f"opset {opset}" if opset else "the default opset"
    hint = (
        "try another opset (to_onnx(..., opset=N)), replace or decompose the op in forward(), "
        "or export to TorchScript with to_torchscript(..., method='trace')"
    )
    if op:
        return UnsupportedOpError(
            f"{what}: operator {op!r} is not supported by the ONNX exporters at {opset_txt}; "
            f"{hint}. Details: " + " | ".join(tried),
            op=op,
        )
    return ExportError(f"{what}: ONNX export failed; {hint}. Details: " + " | ".join(tried))


def _finish_onnx(job: _OnnxJob, path: Path, tmp: Path, used: str) -> OnnxExport:
    """Stamp the metadata into ``tmp`` and move it (and any side file) into place at ``path``."""
    import onnx

    model = onnx.load(str(tmp), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph_outputs = [o.name for o in model.graph.output]
    if graph_outputs != job.output_names:
        warnings.warn(
            f"{job.what}: ONNX outputs {graph_outputs} do not match the flattened eager outputs "
            f"{job.output_names}; keeping the exporter's names",
            ExportFallbackWarning,
            stacklevel=3,
        )
    out_names = graph_outputs  # the eager names, or the exporter's where they differ
    graph_inputs = {i.name for i in model.graph.input}
    metadata: dict[str, Any] = {
        "format": "onnx",
        "model_class": _model_class(job.module),
        "trainflow_version": _trainflow_version(),
        "torch_version": torch.__version__,
        "exporter": used,
        "opset": opset,
        "dynamic_batch": job.dynamic_batch,
        "inputs": [
            d
            for d in _describe_inputs(job.input_names, job.sample_tensors, job.dynamic_batch)
            if d["name"] in graph_inputs
        ],
        "outputs": out_names,
        **job.metadata,
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = f"trainflow.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(tmp))
    # Move side files (external data) first, then the model: the model never points at nothing.
    external = None
    for f in sorted(tmp.parent.iterdir()):
        if f != tmp:
            _fsync(f)
            os.replace(f, path.parent / f.name)
            external = path.parent / f.name
    _fsync(tmp)
    os.replace(tmp, path)
    sidecar = _sidecar(path)
    _atomic_write_text(sidecar, json.dumps(metadata, indent=2) + "\n")
    return OnnxExport(
        path=path,
        exporter=used,
        opset=opset,
        input_names=[d["name"] for d in metadata["inputs"]],
        output_names=out_names,
        metadata=metadata,
        sidecar=sidecar,
        external_data=external,
    )


# --------------------------------------------------------------------------- TorchScript
_TS_WARNED = False
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated.*"


@contextlib.contextmanager
def _jit_quietly() -> Iterator[None]:
    """Run torch.jit calls with torch's per-call DeprecationWarning replaced by one of ours.

    torch 2.13 warns on every torch.jit.script/trace/save/load call; we show one
    :class:`TorchScriptDeprecationWarning` per process (on the first TorchScript call).
    """
    global _TS_WARNED
    if not _TS_WARNED:
        warnings.warn(
            "TorchScript is deprecated upstream (torch: '`torch.jit.script` is deprecated. "
            "Please switch to `torch.compile` or `torch.export`.'); trainflow keeps "
            "to_torchscript working and shows this once per process. Prefer to_onnx for serving.",
            TorchScriptDeprecationWarning,
            stacklevel=4,
        )
        _TS_WARNED = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        yield


class _FlatOutputs(nn.Module):
    """Wraps a module so that it returns ``{output name: tensor}`` (for tracing)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Tensor, **kwargs: Tensor) -> dict[str, Tensor]:
        return dict(_flatten_outputs(self.inner(*args, **kwargs)))


@contextlib.contextmanager
def _fresh_jit_types() -> Iterator[None]:
    """Compile into a new compilation unit and type store: TorchScript numbers type names by
    how many were compiled before in the process (``___torch_mangle_N``), so without this the
    n-th export of one model in a process saves to other bytes than the first."""
    from torch.jit import _recursive, _state

    saved = _state._python_cu, _recursive.concrete_type_store
    _state._python_cu = torch._C.CompilationUnit()
    _recursive.concrete_type_store = _recursive.ConcreteTypeStore()
    try:
        yield
    finally:
        _state._python_cu, _recursive.concrete_type_store = saved


def _traceable_outputs(out: Any) -> bool:
    if isinstance(out, Tensor):
        return True
    if isinstance(out, (tuple, list)):
        return all(_traceable_outputs(o) for o in out)
    if isinstance(out, Mapping):
        kinds = {type(v) for v in out.values()}
        return len(kinds) <= 1 and all(_traceable_outputs(v) for v in out.values())
    return False


def to_torchscript(
    module: nn.Module,
    path: str | os.PathLike | None = None,
    method: str = "script",
    example_inputs: Any = None,
    **kwargs: Any,
) -> torch.jit.ScriptModule:
    """Script (``method='script'``) or trace (``'trace'``) ``module`` in eval mode.

    ``kwargs`` go to ``torch.jit.script`` / ``torch.jit.trace`` (e.g. ``check_trace=False``).

    Returns the ScriptModule (in eval mode); with ``path`` also saves it atomically with its
    metadata inside (extra file ``trainflow.json``) and in ``<path>.json``. Tracing uses
    ``example_inputs``, else ``module.example_input_array``; outputs the tracer cannot type
    (a dict mixing tensors and tuples) come back as a flat dict keyed by :func:`output_names`.
    """
    what = f"to_torchscript({type(module).__name__}, method={method!r})"
    if method not in ("script", "trace"):
        raise ExportError(f"{what}: method must be 'script' or 'trace' (got {method!r})")
    sample = None
    if method == "trace" or example_inputs is not None:
        sample = _resolve_sample(module, example_inputs, what)
    elif getattr(module, "example_input_array", None) is not None:
        sample = _resolve_sample(module, None, what)
    if sample is not None:
        sample = _to(*sample, _module_device(module))

    with _eval_mode(module), _jit_quietly(), _jit_scripting(module), _fresh_jit_types():
        if method == "script":
            try:
                ts = torch.jit.script(module, **kwargs)
            except Exception as e:
                raise ExportError(
                    f"{what}: torch.jit.script failed: {_summary(e)}; use method='trace' "
                    "(with example_inputs) or make forward() scriptable"
                ) from e
        else:
            args, kw = sample
            with torch.no_grad():
                mixed = not _traceable_outputs(module(*args, **kw))
            # The tracer wants tensors, tuples/lists and dicts of one value type; other output
            # structures are returned as a flat dict keyed by output_names() (as in ONNX).
            target = _FlatOutputs(module) if mixed else module
            try:
                ts = torch.jit.trace(
                    target,
                    example_inputs=args or None,
                    example_kwarg_inputs=kw or None,
                    # compiled into the fresh unit of _fresh_jit_types (stable type names)
                    **{"strict": False, "_compilation_unit": torch.jit._state._python_cu,
                       **kwargs},
                )
            except Exception as e:
                raise ExportError(f"{what}: torch.jit.trace failed: {_summary(e)}") from e
    ts.eval()
    if path is None:
        return ts

    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"{what}: folder {str(path.parent)!r} does not exist; create it first")
    metadata: dict[str, Any] = {
        "format": "torchscript",
        "model_class": _model_class(module),
        "trainflow_version": _trainflow_version(),
        "torch_version": torch.__version__,
        "exporter": f"torchscript-{method}",
        "method": method,
    }
    if sample is not None:
        args, kw = sample
        with _eval_mode(module), torch.no_grad():
            outs = output_names(module(*args, **kw))
        metadata["inputs"] = _describe_inputs(
            _input_names(module, args, kw), [*args, *kw.values()], dynamic_batch=True
        )
        metadata["outputs"] = outs
    text = json.dumps(metadata, indent=2) + "\n"
    # Saved to memory, not to the temp file: torch.jit.save names the archive's top folder after
    # the file it writes, so a random temp name would make every export of one model differ.
    buf = io.BytesIO()
    with _jit_quietly():
        torch.jit.save(ts, buf, _extra_files={METADATA_KEY: text})
    _atomic_write_bytes(path, _stable_archive(buf.getvalue()))
    _atomic_write_text(_sidecar(path), text)
    return ts


def _stable_archive(blob: bytes) -> bytes:
    """The TorchScript archive rebuilt so that the same model always gives the same bytes.

    Dropped: the ``*.debug_pkl`` records (the Python call stack at trace time, Prefect's frames
    included: they differ from run to run and only serve error messages). Replaced: torch's
    ``.data/serialization_id`` (a per-process counter) by a hash of the other records. Entries
    keep their order and are stored uncompressed with a fixed timestamp, as torch writes them.
    """
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(blob))
    records = [(i.filename, src.read(i)) for i in src.infolist()
               if not i.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256()
    for name, data in records:
        if not name.endswith("/.data/serialization_id"):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, data in records:
            if name.endswith("/.data/serialization_id"):
                data = str(int(digest.hexdigest(), 16)).zfill(len(data))[: len(data)].encode()
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


# --------------------------------------------------------------------------- metadata
def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The trainflow metadata of an exported file (ONNX or TorchScript), else its sidecar."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        meta: dict[str, Any] = {}
        for p in model.metadata_props:
            if p.key.startswith("trainflow."):
                key = p.key.removeprefix("trainflow.")
                try:
                    meta[key] = json.loads(p.value)
                except ValueError:
                    meta[key] = p.value
        if meta:
            return meta
    else:
        extra = {METADATA_KEY: ""}
        with contextlib.suppress(Exception), _jit_quietly():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            if extra[METADATA_KEY]:
                return json.loads(extra[METADATA_KEY])
    sidecar = _sidecar(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    raise ExportError(f"{path}: no trainflow metadata in the file and no sidecar {sidecar.name}")


# --------------------------------------------------------------------------- verify
@dataclass
class OutputStats:
    """Worst error of one output of one backend over all batches checked."""

    backend: str  # "onnx" | "torchscript"
    output: str
    max_abs: float = 0.0
    max_rel: float = 0.0  # max |a - r| / |r| over elements with r != 0
    mismatched: int = 0  # elements outside atol + rtol * |r|
    numel: int = 0
    worst_batch_size: int | None = None
    note: str = ""  # shape/dtype problems

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and not self.note


@dataclass
class VerifyReport:
    """Max abs / rel error per backend and output, from :func:`verify`."""

    atol: float
    rtol: float
    batch_sizes: list[int]
    backends: list[str]
    stats: dict[str, dict[str, OutputStats]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for per in self.stats.values() for s in per.values())

    def max_abs(self, backend: str | None = None) -> float:
        return max(
            (
                s.max_abs
                for b, per in self.stats.items()
                if backend in (None, b)
                for s in per.values()
            ),
            default=0.0,
        )

    def max_rel(self, backend: str | None = None) -> float:
        return max(
            (
                s.max_rel
                for b, per in self.stats.items()
                if backend in (None, b)
                for s in per.values()
            ),
            default=0.0,
        )

    def failures(self) -> list[OutputStats]:
        return [s for per in self.stats.values() for s in per.values() if not s.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (for the pipeline's ExportRef / MLflow)."""
        return {
            "ok": self.ok,
            "atol": self.atol,
            "rtol": self.rtol,
            "batch_sizes": self.batch_sizes,
            "backends": self.backends,
            "stats": {b: {o: asdict(s) for o, s in per.items()} for b, per in self.stats.items()},
        }

    def __str__(self) -> str:
        rows = [f"{'backend':<12} {'output':<24} {'max abs':>10} {'max rel':>10}  ok"]
        for b, per in self.stats.items():
            for o, s in per.items():
                rows.append(
                    f"{b:<12} {o:<24} {s.max_abs:>10.3g} {s.max_rel:>10.3g}  "
                    f"{'yes' if s.ok else 'NO ' + s.note}"
                )
        return "\n".join(rows)


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


def _compare(
    stats: OutputStats, got: Any, ref: Tensor, batch: int | None, atol: float, rtol: float
) -> None:
    got_t = torch.as_tensor(got).detach().cpu()
    ref = ref.detach().cpu()
    if tuple(got_t.shape) != tuple(ref.shape):
        stats.note = f"shape {tuple(got_t.shape)} != eager {tuple(ref.shape)} at batch {batch}"
        return
    g, r = got_t.to(torch.float64), ref.to(torch.float64)
    diff = (g - r).abs()
    # NaN where eager has NaN too is a match; any other NaN is an infinite error.
    both_nan = torch.isnan(g) & torch.isnan(r)
    diff = torch.where(both_nan, 0.0, torch.nan_to_num(diff, nan=math.inf))
    bad = diff > atol + rtol * r.abs().nan_to_num(nan=0.0)
    max_abs = float(diff.max()) if diff.numel() else 0.0
    nz = (r != 0) & ~torch.isnan(r)
    max_rel = float((diff[nz] / r[nz].abs()).max()) if bool(nz.any()) else 0.0
    stats.numel += diff.numel()
    stats.mismatched += int(bad.sum())
    if max_abs >= stats.max_abs:
        stats.worst_batch_size = batch
    stats.max_abs = max(stats.max_abs, max_abs)
    stats.max_rel = max(stats.max_rel, max_rel)


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
    args, kw = _resolve_sample(module, input_sample, what)
    names = _input_names(module, args, kw)
    sample = [*args, *kw.values()]
    device = _module_device(module)
    try:
        sample_batch = _batch_size(args, kw, what)
    except ExportError:  # inputs without a common batch dim: check at the sample's shapes
        sample_batch = None
    backends: dict[str, Any] = {}
    dynamic = {"onnx": True, "torchscript": True}
    if onnx_path is not None:
        session = _ort_session(onnx_path)
        backends["onnx"] = session
        with contextlib.suppress(ExportError):
            dynamic["onnx"] = bool(read_metadata(onnx_path).get("dynamic_batch", True))
    if torchscript_path is not None:
        with _jit_quietly():
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
    with _eval_mode(module), torch.no_grad():
        for bs in plan:
            inputs = [_random_like(t, bs, gen) for t in sample]
            ref_args = tuple(t.to(device) for t in inputs[: len(args)])
            ref_kw = {k: t.to(device) for k, t in zip(kw, inputs[len(args) :])}
            ref = dict(_flatten_outputs(module(*ref_args, **ref_kw)))
            for backend, runner in backends.items():
                if not dynamic[backend] and bs is not None and bs != sample_batch:
                    continue
                per = report.stats.setdefault(backend, {})
                if backend == "onnx":
                    got = _run_ort(runner, dict(zip(names, inputs)), list(ref))
                else:
                    got = dict(_flatten_outputs(runner(*ref_args, **ref_kw)))
                for name, r in ref.items():
                    stats = per.setdefault(name, OutputStats(backend=backend, output=name))
                    if name not in got:
                        stats.note = f"missing (has {sorted(got)})"
                        continue
                    _compare(stats, got[name], r, bs, atol, rtol)
    failures = report.failures()
    if failures:
        worst = max(failures, key=lambda s: (bool(s.note), s.max_abs))
        detail = worst.note or (
            f"max abs error {worst.max_abs:.3g}, max rel error {worst.max_rel:.3g} "
            f"({worst.mismatched} of {worst.numel} elements outside atol={atol:g} + "
            f"rtol={rtol:g}*|eager|, worst at batch {worst.worst_batch_size})"
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
    return report


def _ort_session(path: str | os.PathLike):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run_ort(session, inputs: dict[str, Tensor], ref_names: list[str]) -> dict[str, Any]:
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
