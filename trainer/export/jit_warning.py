"""torch 2.13 warns on every torch.jit.script/trace/save/load call; we warn once per process."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from trainer.export.errors import TorchScriptDeprecationWarning

_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated.*"
_warned = False


@contextlib.contextmanager
def jit_quietly() -> Iterator[None]:
    """Run torch.jit calls with torch's per-call DeprecationWarning replaced by one
    :class:`TorchScriptDeprecationWarning` per process (on the first TorchScript call)."""
    global _warned
    if not _warned:
        warnings.warn(
            "TorchScript is deprecated upstream (torch: '`torch.jit.script` is deprecated. "
            "Please switch to `torch.compile` or `torch.export`.'); trainflow keeps "
            "to_torchscript working and shows this once per process. Prefer to_onnx for serving.",
            TorchScriptDeprecationWarning,
            stacklevel=4,
        )
        _warned = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        yield
