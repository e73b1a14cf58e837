"""Inputs and outputs of a module as exports see them: the sample, the names, the batch axis.

Inputs take the names of ``forward``'s parameters (``x``, ``mask``...; a ``*args`` parameter
gives ``args_0``, ``args_1``...). Outputs are flattened in order: a single tensor is
``output``; a tuple/list at the top is ``output_0``, ``output_1``...; dict keys are used as they
are and nested containers are joined with dots: ``{"logits": t, "aux": {"z": t}, "pair": (t,
t)}`` gives ``logits``, ``aux.z``, ``pair.0``, ``pair.1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trainer.export.errors import ExportError

BATCH_AXIS = "batch"

Sample = tuple[tuple[Tensor, ...], dict[str, Tensor]]


def resolve_sample(module: nn.Module, sample: Any, what: str) -> Sample:
    """The input sample (else ``module.example_input_array``) as (args, kwargs) of tensors."""
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


def input_names(
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


def dynamic_shapes(
    module: nn.Module, args: Sequence[Tensor], kwargs: Mapping[str, Tensor], batch: Any
) -> dict[str, Any]:
    """``dynamic_shapes`` for torch.export (dim 0 is ``batch``), keyed by forward()'s names."""
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
    return [name for name, _ in flatten_outputs(outputs)]


def flatten_outputs(outputs: Any) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` for every tensor in ``outputs``; ``None`` leaves are skipped."""
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


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a stateless module)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(sample: Sample, device: torch.device) -> Sample:
    """The sample with every tensor on ``device``."""
    args, kwargs = sample
    return tuple(a.to(device) for a in args), {k: v.to(device) for k, v in kwargs.items()}


def batch_size(args: Sequence[Tensor], kwargs: Mapping[str, Tensor], what: str) -> int | None:
    """The common dim 0 of the inputs (None if all are scalars); an error if they disagree."""
    sizes = {t.shape[0] for t in (*args, *kwargs.values()) if t.dim() > 0}
    if len(sizes) > 1:
        raise ExportError(
            f"{what}: dynamic_batch=True needs the same dim 0 (batch) on every input, got sizes "
            f"{sorted(sizes)}; pass dynamic_batch=False to export fixed shapes"
        )
    return sizes.pop() if sizes else None


def describe_inputs(
    names: Sequence[str], tensors: Sequence[Tensor], dynamic_batch: bool
) -> list[dict[str, Any]]:
    """Name, shape (dim 0 ``batch`` when dynamic) and dtype of each input, for the metadata."""
    out = []
    for name, t in zip(names, tensors):
        shape: list[int | str] = list(t.shape)
        if dynamic_batch and shape:
            shape[0] = BATCH_AXIS
        out.append({"name": name, "shape": shape, "dtype": str(t.dtype).removeprefix("torch.")})
    return out
