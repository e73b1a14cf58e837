"""``Trainer.fit(torch.compile(module))``: run the TrainModule inside, compiled as the user asked.

``torch.compile(module)`` returns an ``OptimizedModule`` that holds the TrainModule as
``_orig_mod`` and the compile settings as ``dynamo_ctx``. As Lightning does, the Trainer works on
the TrainModule (hooks, ``self.log``, checkpoints, state_dict keys without ``_orig_mod.``) and runs
its ``forward`` and ``*_step`` methods through the same ``dynamo_ctx``, so the compilation the
user asked for is honoured. The methods are put back when the stage ends.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["unwrap_compiled", "compiled_methods"]

_METHODS = ("forward", "training_step", "validation_step", "test_step", "predict_step")


def _optimized_module_type() -> type | None:
    if "torch._dynamo.eval_frame" not in sys.modules:  # torch.compile imports it: nothing is
        return None  # compiled, and importing dynamo only to ask costs ≈ 1 s of every fit
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # a torch without dynamo
        return None
    return OptimizedModule


def unwrap_compiled(model: Any) -> tuple[Any, Any]:
    """(the module inside, its dynamo context) for a torch.compile'd module, else (model, None)."""
    optimized = _optimized_module_type()
    if optimized is not None and isinstance(model, optimized):
        return model._orig_mod, model.dynamo_ctx
    return model, None


@contextlib.contextmanager
def compiled_methods(module: nn.Module, dynamo_ctx: Any) -> Iterator[None]:
    """Within: ``module``'s forward and step methods run through ``dynamo_ctx``."""
    if dynamo_ctx is None:
        yield
        return
    saved = {name: module.__dict__[name] for name in _METHODS if name in module.__dict__}
    for name in _METHODS:
        setattr(module, name, dynamo_ctx(getattr(module, name)))
    try:
        yield
    finally:
        for name in _METHODS:
            if name in saved:
                module.__dict__[name] = saved[name]
            else:
                module.__dict__.pop(name, None)
