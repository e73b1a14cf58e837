"""The ONNX exporter chosen per model: the demo MLP takes the fast TorchScript-based path,
models it cannot take get dynamo, and either way the file matches torch in onnxruntime."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from trainer.export import ExportError, read_metadata, to_onnx, verify

FAST = "auto: the TorchScript-based exporter traced the model without a warning"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_model_takes_the_fast_path_and_matches_torch_in_onnxruntime(tmp_path):
    from models.digits import DigitsMLP

    torch.manual_seed(0)
    model = DigitsMLP(hidden=256).eval()  # the demo's 85k parameters
    info = to_onnx(model, tmp_path / "model.onnx")
    assert (info.exporter, info.reason) == ("legacy", FAST)
    meta = read_metadata(info.path)
    assert (meta["exporter"], meta["exporter_reason"]) == ("legacy", FAST)

    x = torch.rand(33, 64) * 16  # raw pixel counts, an odd batch size
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    report = verify(model, onnx_path=info.path, atol=1e-5, rtol=1e-4)
    assert report.ok and report.batch_sizes == [1, 7, 64]


class Spectrum(nn.Module):
    """torch.fft.rfft has no translation in the TorchScript-based exporter; dynamo has one."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x: Tensor) -> Tensor:
        return torch.fft.rfft(self.lin(x)).abs()


def test_a_model_the_fast_path_cannot_take_gets_dynamo(tmp_path):
    model = Spectrum()
    info = to_onnx(model, tmp_path / "fft.onnx")
    assert info.exporter == "dynamo"
    assert info.reason.startswith("auto: the TorchScript-based exporter failed")
    assert "fft_rfft" in info.reason
    assert read_metadata(info.path)["exporter_reason"] == info.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fft.onnx", "fft.onnx.json"]
    assert verify(model, onnx_path=info.path).ok


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.example_input_array = torch.randn(3, 5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


def test_a_warned_trace_goes_to_dynamo_every_time(tmp_path):
    """Python shows a warning once per place; the choice must not change on a second export."""
    model = Recurrent()
    first = to_onnx(model, tmp_path / "a.onnx")
    second = to_onnx(model, tmp_path / "b.onnx")
    assert first.exporter == second.exporter == "dynamo"
    assert "TracerWarning" in first.reason and first.reason == second.reason
    assert verify(model, onnx_path=second.path).ok


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_each_exporter_writes_the_same_bytes_twice(tmp_path, exporter):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    sample = torch.randn(3, 6)
    a = to_onnx(model, tmp_path / "a.onnx", input_sample=sample, exporter=exporter)
    b = to_onnx(model, tmp_path / "b.onnx", input_sample=sample, exporter=exporter)
    assert a.exporter == b.exporter == exporter
    assert read_metadata(a.path)["exporter_reason"] == f"requested: exporter='{exporter}'"
    assert _sha(a.path) == _sha(b.path)


def test_dynamo_only_options_are_honoured_or_refused(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    sample = torch.randn(3, 4)
    info = to_onnx(model, tmp_path / "o.onnx", input_sample=sample, optimize=False)
    assert info.exporter == "dynamo"  # the fast path would have dropped optimize=False
    assert info.reason == "auto: dynamo-only options given (optimize)"
    with pytest.raises(ExportError, match="exporter='legacy' cannot take external data"):
        to_onnx(model, tmp_path / "x.onnx", input_sample=sample, exporter="legacy",
                external_data=True)
    with pytest.raises(ExportError, match="exporter='legacy' cannot take optimize"):
        to_onnx(model, tmp_path / "x.onnx", input_sample=sample, exporter="legacy",
                optimize=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx", "o.onnx.json"]
