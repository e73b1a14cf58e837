"""The state a module is exported in, restored afterwards: eval mode, and torch.jit's flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode (dropout off, batchnorm running stats); restore each
    one's own flag afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def jit_scripting(module: nn.Module) -> Iterator[None]:
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
