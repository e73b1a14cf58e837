"""TorchScript export: script or trace the module in eval mode, save it byte-stable with its
metadata inside (extra file ``trainflow.json``) and beside it (``<path>.json``)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.export.determinism import fresh_jit_types, stable_archive
from trainer.export.errors import ExportError
from trainer.export.failures import summary
from trainer.export.inputs import (
    describe_inputs,
    flatten_outputs,
    input_names,
    module_device,
    output_names,
    resolve_sample,
    to_device,
)
from trainer.export.jit_warning import jit_quietly
from trainer.export.metadata import TORCHSCRIPT_KEY, base_metadata, to_json, write_sidecar
from trainer.export.modes import eval_mode, jit_scripting
from trainer.fileio import atomic_write_bytes


def to_torchscript(
    module: nn.Module,
    path: str | os.PathLike | None = None,
    method: str = "script",
    example_inputs: Any = None,
    **kwargs: Any,
) -> torch.jit.ScriptModule:
    """Script (``method='script'``) or trace (``'trace'``) ``module`` in eval mode.

    ``kwargs`` go to ``torch.jit.script`` / ``torch.jit.trace`` (e.g. ``check_trace=True``:
    off by default, :func:`verify` checks the saved module on fresh batches instead).

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
        sample = resolve_sample(module, example_inputs, what)
    elif getattr(module, "example_input_array", None) is not None:
        sample = resolve_sample(module, None, what)
    if sample is not None:
        sample = to_device(sample, module_device(module))

    with eval_mode(module), jit_quietly(), jit_scripting(module), fresh_jit_types():
        if method == "script":
            ts = _script(module, what, kwargs)
        else:
            ts = _trace(module, sample, what, kwargs)
    ts.eval()
    if path is None:
        return ts

    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"{what}: folder {str(path.parent)!r} does not exist; create it first")
    metadata = base_metadata(module, "torchscript", f"torchscript-{method}")
    metadata["method"] = method
    if sample is not None:
        args, kw = sample
        with eval_mode(module), torch.no_grad():
            outs = output_names(module(*args, **kw))
        metadata["inputs"] = describe_inputs(
            input_names(module, args, kw), [*args, *kw.values()], dynamic_batch=True
        )
        metadata["outputs"] = outs
    text = to_json(metadata)
    # Saved to memory, not to the temp file: torch.jit.save names the archive's top folder after
    # the file it writes, so a random temp name would make every export of one model differ.
    buf = io.BytesIO()
    with jit_quietly():
        torch.jit.save(ts, buf, _extra_files={TORCHSCRIPT_KEY: text})
    atomic_write_bytes(path, stable_archive(buf.getvalue()))
    write_sidecar(path, metadata)
    return ts


def _script(module: nn.Module, what: str, kwargs: dict[str, Any]) -> torch.jit.ScriptModule:
    try:
        return torch.jit.script(module, **kwargs)
    except Exception as e:
        raise ExportError(
            f"{what}: torch.jit.script failed: {summary(e)}; use method='trace' "
            "(with example_inputs) or make forward() scriptable"
        ) from e


def _trace(
    module: nn.Module, sample: Any, what: str, kwargs: dict[str, Any]
) -> torch.jit.ScriptModule:
    args, kw = sample
    with torch.no_grad():
        mixed = not _traceable_outputs(module(*args, **kw))
    # The tracer wants tensors, tuples/lists and dicts of one value type; other output
    # structures are returned as a flat dict keyed by output_names() (as in ONNX).
    target = _FlatOutputs(module) if mixed else module
    options = {
        "strict": False,
        # torch's own trace check re-runs the module and compares with torch.testing, whose
        # first use imports torch.distributed.tensor and sympy (1.6 s); verify() does the check.
        "check_trace": False,
        # compiled into the fresh unit of fresh_jit_types (stable type names)
        "_compilation_unit": torch.jit._state._python_cu,
        **kwargs,
    }
    try:
        return torch.jit.trace(
            target, example_inputs=args or None, example_kwarg_inputs=kw or None, **options
        )
    except Exception as e:
        raise ExportError(f"{what}: torch.jit.trace failed: {summary(e)}") from e


class _FlatOutputs(nn.Module):
    """Wraps a module so that it returns ``{output name: tensor}`` (for tracing)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Tensor, **kwargs: Tensor) -> dict[str, Tensor]:
        return dict(flatten_outputs(self.inner(*args, **kwargs)))


def _traceable_outputs(out: Any) -> bool:
    if isinstance(out, Tensor):
        return True
    if isinstance(out, (tuple, list)):
        return all(_traceable_outputs(o) for o in out)
    if isinstance(out, Mapping):
        kinds = {type(v) for v in out.values()}
        return len(kinds) <= 1 and all(_traceable_outputs(v) for v in out.values())
    return False
