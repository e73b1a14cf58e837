"""The trainer tests compare against CPU loops: keep Trainer(accelerator='auto') on the CPU even
on a machine with a GPU (test_cuda.py is the exception and asks for 'cuda' itself)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _auto_means_cpu(request, monkeypatch):
    if request.node.path.name != "test_cuda.py":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield
