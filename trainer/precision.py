"""Numeric precision: '32-true', 'bf16-mixed', '16-mixed' (autocast, GradScaler on CUDA), and
'bf16-true', '16-true', '64-true' (the module's weights and the batches' floating tensors in that
dtype, no autocast; new tensors made in a step default to it too, as in Lightning)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from trainer.accelerator import Accelerator

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
_ALIASES = {
    "32": "32-true", 32: "32-true", "32-true": "32-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16": "16-mixed", 16: "16-mixed", "16-mixed": "16-mixed",
    "bf16-true": "bf16-true", "16-true": "16-true",
    "64": "64-true", 64: "64-true", "64-true": "64-true",
}
_TRUE_DTYPES = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


def normalize_precision(value: Any) -> str:
    """Map accepted spellings to one of PRECISIONS, or raise a ValueError naming the choices."""
    try:
        return _ALIASES[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"Trainer(precision=...): must be one of {list(PRECISIONS)} (got {value!r})"
        ) from None


class Precision:
    """Autocast context and loss scaling on one accelerator.

    ``autocast`` is None for 32-true so the loop can skip the context entirely. ``scaler`` is
    always a GradScaler, enabled only for 16-mixed where the accelerator supports it (CUDA): a
    disabled one passes losses and steps through unchanged, so callers never branch on it. For
    the '*-true' precisions ``true_dtype`` is the dtype of weights and inputs, and ``autocast``
    is a context making it the default dtype.
    """

    def __init__(self, precision: str, accelerator: Accelerator) -> None:
        self.precision = normalize_precision(precision)
        self.accelerator = accelerator
        if self.precision == "16-mixed" and not accelerator.supports_fp16_scaler:
            raise ValueError(f"Trainer(precision='16-mixed'): float16 autocast needs CUDA "
                             f"(accelerator is {accelerator.name!r}); use 'bf16-mixed'")
        self.true_dtype: torch.dtype | None = _TRUE_DTYPES.get(self.precision)
        if self.true_dtype is not None:
            self.dtype = self.true_dtype
        elif self.precision == "32-true":
            self.dtype = None
        else:
            self.dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        self.scaler = accelerator.grad_scaler(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager | None:
        """A fresh autocast context, or None for full precision."""
        if self.dtype is None:
            return None
        if self.true_dtype is not None:
            return _default_dtype(self.true_dtype)
        return self.accelerator.autocast(self.dtype)

    def context(self) -> contextlib.AbstractContextManager:
        ctx = self.autocast()
        return ctx if ctx is not None else contextlib.nullcontext()

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """'*-true': the module's floating parameters and buffers to ``true_dtype`` (in place)."""
        if self.true_dtype is not None:
            module.to(dtype=self.true_dtype)
        return module

    def convert_input(self, batch: Any) -> Any:
        """'*-true': the batch's floating tensors to ``true_dtype`` (integers, labels, stay)."""
        return batch if self.true_dtype is None else _cast_floats(batch, self.true_dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _cast_floats(batch: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in tensors / tuples / lists / dicts / dataclasses to ``dtype``."""
    if isinstance(batch, Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_cast_floats(b, dtype) for b in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_cast_floats(b, dtype) for b in batch)
    if isinstance(batch, Mapping):
        return type(batch)({k: _cast_floats(v, dtype) for k, v in batch.items()})
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: _cast_floats(getattr(batch, f.name), dtype)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Any:
    """Within: tensors made without a dtype (torch.zeros(...)) are ``dtype``."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
