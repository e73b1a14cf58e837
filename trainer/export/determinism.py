"""The same model exports to the same bytes, in any process, however many exports came before.

Two things in a TorchScript export vary from run to run, and both are removed here: the type
names torch.jit numbers per process (``___torch_mangle_N``) and the records of the saved
archive that hold call stacks or a per-process counter. (ONNX files need nothing: both
exporters write the same bytes for the same model; the tests check it.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import zipfile
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def fresh_jit_types() -> Iterator[None]:
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


def stable_archive(blob: bytes) -> bytes:
    """The TorchScript archive rebuilt so that the same model always gives the same bytes.

    Dropped: the ``*.debug_pkl`` records (the Python call stack at trace time, Prefect's frames
    included: they differ from run to run and only serve error messages). Replaced: torch's
    ``.data/serialization_id`` (a per-process counter) by a hash of the other records. Entries
    keep their order and are stored uncompressed with a fixed timestamp, as torch writes them.
    """
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
