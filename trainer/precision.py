"""Numeric precision: '32-true', 'bf16-mixed', '16-mixed' (autocast, GradScaler on CUDA)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
_ALIASES = {
    "32": "32-true", 32: "32-true", "32-true": "32-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16": "16-mixed", 16: "16-mixed", "16-mixed": "16-mixed",
}


def normalize_precision(value: Any) -> str:
    """Map accepted spellings to one of PRECISIONS, or raise a ValueError naming the choices."""
    try:
        return _ALIASES[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"Trainer(precision=...): must be one of {list(PRECISIONS)} (got {value!r})"
        ) from None


class Precision:
    """Autocast context and loss scaling for one device type.

    ``autocast`` is None for 32-true so the loop can skip the context entirely; ``scaler`` is a
    GradScaler only for 16-mixed on CUDA.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision = normalize_precision(precision)
        self.device_type = torch.device(device).type
        self.scaler: torch.amp.GradScaler | None = None
        if self.precision == "32-true":
            self.dtype = None
        else:
            self.dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
            if self.precision == "16-mixed" and self.device_type == "cuda":
                self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager | None:
        """A fresh autocast context, or None for full precision."""
        if self.dtype is None:
            return None
        return torch.autocast(self.device_type, dtype=self.dtype)

    def context(self) -> contextlib.AbstractContextManager:
        ctx = self.autocast()
        return ctx if ctx is not None else contextlib.nullcontext()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()``, scaled first under 16-mixed (GradScaler)."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(*args, **kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale before clipping or inspecting them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> Any:
        if self.scaler is not None:
            out = self.scaler.step(optimizer) if closure is None else self.scaler.step(
                optimizer, closure
            )
            self.scaler.update()
            return out
        return optimizer.step() if closure is None else optimizer.step(closure)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
