"""trainer.export: ONNX and TorchScript export, verified against eager torch with onnxruntime."""

from __future__ import annotations

import copy
import json
import warnings

import onnx
import pytest
import torch
from torch import Tensor, nn

from trainer.export import (
    ExportError,
    ExportFallbackWarning,
    ExportMismatch,
    TorchScriptDeprecationWarning,
    UnsupportedOpError,
    jit_warning,
    output_names,
    read_metadata,
    to_onnx,
    to_torchscript,
    verify,
)
from trainer.export.report import OutputStats, compare


# --------------------------------------------------------------------------- test models
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Batchnorm and dropout: eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.example_input_array = torch.randn(2, 1, 8, 8)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.head(self.drop(x.flatten(1)))


class TwoInDictOut(nn.Module):
    """Two inputs (one integer), a dict output with a nested tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.proj = nn.Linear(5, 6)
        self.cls = nn.Linear(6, 4)
        self.example_input_array = (torch.randn(3, 5), torch.randint(0, 10, (3, 7)))

    def forward(self, feats: Tensor, tokens: Tensor) -> dict[str, Tensor | tuple[Tensor, Tensor]]:
        h = self.proj(feats) + self.emb(tokens).mean(1)
        logits = self.cls(h)
        return {"logits": logits, "extra": (h, logits.softmax(-1))}


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 2)
        self.example_input_array = torch.randn(3, 6, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, (h, _c) = self.lstm(x)
        return self.head(out[:, -1]), h


class SVDNet(nn.Module):
    """torch.linalg.svd has no ONNX translation in either exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.example_input_array = torch.randn(2, 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.linalg.svdvals(self.lin(x))


class NoSample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)


def _trained(model: nn.Module) -> nn.Module:
    """Give batchnorm non-trivial running stats and leave the model in train mode."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        s = model.example_input_array
        for _ in range(3):
            model(*s) if isinstance(s, tuple) else model(s)
    return model


MODELS = {"mlp": MLP, "cnn": SmallCNN, "dict": TwoInDictOut, "lstm": LSTMNet}
# Which exporter "auto" picks: plain layers trace cleanly (fast path); the LSTM's trace warns
# (it reads tensors into Python bools), so it goes to dynamo.
EXPORTER = {"mlp": "legacy", "cnn": "legacy", "dict": "legacy", "lstm": "dynamo"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported once both ways (the expensive part), shared by the tests below."""
    torch.manual_seed(0)
    out = {}
    for key, cls in MODELS.items():
        d = tmp_path_factory.mktemp(key)
        model = _trained(cls())
        info = to_onnx(model, d / "model.onnx")
        assert model.training  # mode restored
        to_torchscript(model, d / "model.pt")
        to_torchscript(model, d / "traced.pt", method="trace")
        out[key] = (model, info, d)
    return out


# --------------------------------------------------------------------------- ONNX + TorchScript
@pytest.mark.parametrize("key", list(MODELS))
def test_export_both_ways_and_verify(exported, key):
    model, info, d = exported[key]
    assert info.exporter == EXPORTER[key]
    assert read_metadata(info.path)["exporter_reason"].startswith("auto: the TorchScript-based")
    assert info.opset >= 17
    assert info.path.exists() and not (d / "model.onnx.data").exists()  # single file
    report = verify(model, onnx_path=info.path, torchscript_path=d / "model.pt")
    assert report.ok and report.backends == ["onnx", "torchscript"]
    assert report.batch_sizes == [1, 7, 64]
    for per in report.stats.values():
        assert set(per) == set(info.output_names)
        assert all(s.max_abs < 1e-4 for s in per.values())
    traced = verify(model, torchscript_path=d / "traced.pt")
    assert traced.ok
    assert model.training  # verify restores the mode too


def test_dynamic_batch_axis_in_graph(exported):
    _, info, _ = exported["dict"]
    m = onnx.load(str(info.path))
    for inp in m.graph.input:
        assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    # integer input survives (token ids drawn in the sample's range for verify)
    assert [i.name for i in m.graph.input] == ["feats", "tokens"]


def test_output_names_flattened(exported):
    _, info, _ = exported["dict"]
    assert info.output_names == ["logits", "extra.0", "extra.1"]
    assert [o.name for o in onnx.load(str(info.path)).graph.output] == info.output_names
    assert exported["lstm"][1].output_names == ["output_0", "output_1"]
    assert exported["mlp"][1].output_names == ["output"]
    assert output_names({"a": {"b": torch.ones(1)}, "c": [torch.ones(1)]}) == ["a.b", "c.0"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_eval_mode_used_for_export(exported):
    """Dropout off and batchnorm running stats in the export, whatever the module's mode."""
    model, info, d = exported["cnn"]
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    want = model(x).detach()
    model.train()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    ts = torch.jit.load(str(d / "model.pt"))
    assert not ts.training
    torch.testing.assert_close(ts(x), want, atol=1e-5, rtol=1e-4)


def test_metadata_in_file_and_sidecar(exported):
    model, info, d = exported["dict"]
    meta = read_metadata(info.path)
    assert meta["model_class"].endswith(":TwoInDictOut")
    assert meta["exporter"] == "legacy" and meta["opset"] == info.opset
    assert meta["exporter_reason"] == (
        "auto: the TorchScript-based exporter traced the model without a warning"
    )
    assert meta["trainflow_version"] and meta["torch_version"] == torch.__version__
    assert meta["inputs"] == [
        {"name": "feats", "shape": ["batch", 5], "dtype": "float32"},
        {"name": "tokens", "shape": ["batch", 7], "dtype": "int64"},
    ]
    assert meta["outputs"] == ["logits", "extra.0", "extra.1"]
    props = {p.key: p.value for p in onnx.load(str(info.path)).metadata_props}
    assert props["trainflow.exporter"] == "legacy"
    assert json.loads((d / "model.onnx.json").read_text()) == meta
    ts_meta = read_metadata(d / "model.pt")
    assert ts_meta["exporter"] == "torchscript-script"
    assert ts_meta["inputs"][1]["dtype"] == "int64"
    assert json.loads((d / "traced.pt.json").read_text())["method"] == "trace"


def test_perturbed_weights_fail_verification(exported):
    model, info, d = exported["mlp"]
    model = copy.deepcopy(model)
    verify(model, onnx_path=info.path, torchscript_path=d / "model.pt")
    with torch.no_grad():
        model.net[2].weight.add_(0.05)
    with pytest.raises(ExportMismatch) as err:
        verify(model, onnx_path=info.path, torchscript_path=d / "model.pt")
    e = err.value
    assert e.output == "output" and e.max_abs > 1e-3
    assert "'output'" in str(e) and "max abs error" in str(e)
    assert {s.backend for s in e.report.failures()} == {"onnx", "torchscript"}


def test_tolerance_boundary(exported):
    """A tiny perturbation passes a loose tolerance and fails a tight one."""
    model, info, _ = exported["mlp"]
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.net[2].bias.add_(1e-3)
    report = verify(model, onnx_path=info.path, atol=1e-2, rtol=0)
    assert 5e-4 < report.max_abs("onnx") < 2e-3
    with pytest.raises(ExportMismatch, match="onnx output 'output'"):
        verify(model, onnx_path=info.path, atol=1e-5, rtol=0)


def test_batch_one_sample_and_static_batch(tmp_path):
    model = MLP()
    model.example_input_array = torch.randn(1, 8)  # size-1 dims get specialized by torch.export
    info = to_onnx(model, tmp_path / "b1.onnx")
    assert verify(model, onnx_path=info.path, batch_sizes=(1, 7, 64)).batch_sizes == [1, 7, 64]
    static = to_onnx(model, tmp_path / "static.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(static.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1
    assert read_metadata(static.path)["inputs"][0]["shape"] == [1, 8]
    assert verify(model, onnx_path=static.path).ok  # only the sample's batch size is checked
    report = verify(model, onnx_path=static.path, batch_sizes=(7, 64))
    assert report.stats["onnx"]["output"].numel == 3  # batch 1 x 3 outputs, added to the plan


def test_dict_input_sample(tmp_path):
    model = TwoInDictOut()
    sample = {"feats": torch.randn(2, 5), "tokens": torch.randint(0, 10, (2, 7))}
    info = to_onnx(model, tmp_path / "kw.onnx", input_sample=sample)
    assert info.input_names == ["feats", "tokens"]
    assert verify(model, onnx_path=info.path, input_sample=sample).ok


# --------------------------------------------------------------------------- errors
def test_missing_sample_error(tmp_path):
    with pytest.raises(ExportError, match="no input sample for NoSample.*example_input_array"):
        to_onnx(NoSample(), tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="no input sample"):
        to_torchscript(NoSample(), method="trace")
    assert list(tmp_path.iterdir()) == []
    # scripting needs no sample
    assert isinstance(to_torchscript(NoSample()), torch.jit.ScriptModule)


def test_unsupported_op_error_and_atomic_write(tmp_path):
    target = tmp_path / "svd.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(UnsupportedOpError) as err:  # both exporters tried, both named
        to_onnx(SVDNet(), target)
    assert "svd" in err.value.op
    assert "legacy exporter:" in str(err.value) and "dynamo exporter:" in str(err.value)
    msg = str(err.value)
    assert "method='trace'" in msg and "opset" in msg and err.value.op in msg
    # the failed export neither replaced nor half-wrote the file, and left no temporaries
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svd.onnx"]
    # a fresh path stays absent (legacy exporter alone: the same error, faster)
    with pytest.raises(UnsupportedOpError, match="linalg_svd") as err:
        to_onnx(SVDNet(), tmp_path / "new.onnx", exporter="legacy")
    assert "dynamo exporter:" not in str(err.value)
    assert not (tmp_path / "new.onnx").exists() and not (tmp_path / "new.onnx.json").exists()
    # TorchScript handles it
    assert isinstance(to_torchscript(SVDNet(), method="trace"), torch.jit.ScriptModule)


def test_fallback_to_legacy_records_exporter(tmp_path):
    """A data-dependent branch: the trace warns, torch.export cannot capture it either, so the
    traced export is kept with a warning (and recorded as such)."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.example_input_array = torch.randn(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            y = self.lin(x)
            if float(y.sum()) > 1e9:  # never true; torch.export cannot trace float()
                y = y * 2
            return y

    model = Branchy()
    with pytest.warns(ExportFallbackWarning, match="warned.*dynamo exporter failed.*traced"):
        info = to_onnx(model, tmp_path / "b.onnx")
    assert info.exporter == "legacy" and info.fallback_reason
    meta = read_metadata(info.path)
    assert meta["exporter"] == "legacy" and "TracerWarning" in meta["exporter_reason"]
    assert "dynamo exporter failed" in meta["exporter_reason"]
    assert verify(model, onnx_path=info.path).ok


def test_script_failure_suggests_trace():
    class Unscriptable(nn.Module):
        def forward(self, x):
            return sum(v for v in [x, x])  # generator expressions are not scriptable

    with pytest.raises(ExportError, match="method='trace'"):
        to_torchscript(Unscriptable())


def test_bad_arguments(tmp_path):
    with pytest.raises(ExportError, match="method must be"):
        to_torchscript(MLP(), method="compile")
    with pytest.raises(ExportError, match="does not exist"):
        to_onnx(MLP(), tmp_path / "nope" / "m.onnx")
    with pytest.raises(ExportError, match="nothing to check"):
        verify(MLP())


# --------------------------------------------------------------------------- warnings
def test_torchscript_deprecation_warning_once(tmp_path, monkeypatch):
    monkeypatch.setattr(jit_warning, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            to_torchscript(MLP(), tmp_path / "m.pt")
        verify(MLP(), torchscript_path=tmp_path / "m.pt", batch_sizes=(2,), samples=1, atol=1e9)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    assert deprecations[0].category is TorchScriptDeprecationWarning
    assert "torch.jit" in str(deprecations[0].message)


# --------------------------------------------------------------------------- through TrainModule
def _train_module_net():
    module = pytest.importorskip("trainer.module")

    class Net(module.TrainModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.3))
            self.head = nn.Linear(8, 2)
            self.example_input_array = torch.randn(5, 6)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.body(x))

        def training_step(self, batch, batch_idx):
            return self(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return _trained(Net())


def test_train_module_to_onnx(tmp_path):
    net = _train_module_net()
    info = net.to_onnx(tmp_path / "net.onnx")
    assert info.exporter == "legacy" and net.training
    assert read_metadata(info.path)["model_class"].endswith(".Net")
    report = verify(net, onnx_path=info.path)
    assert report.ok and report.batch_sizes == [1, 7, 64]


@pytest.mark.parametrize("method", ["script", "trace"])
def test_train_module_to_torchscript(tmp_path, method):
    net = _train_module_net()
    net.to_torchscript(tmp_path / "net.pt", method=method)
    assert verify(net, torchscript_path=tmp_path / "net.pt").ok


# --------------------------------------------------------------------------- options
def test_opset_external_data_and_mode_restore(tmp_path):
    model = SmallCNN()
    model.train()
    model.bn.eval()  # a mixed-mode module: each submodule gets its own flag back
    info = to_onnx(model, tmp_path / "big.onnx", opset=18, external_data=True)
    assert info.exporter == "dynamo"  # the only exporter that writes external data
    assert info.reason == "auto: external data (only the dynamo exporter writes it)"
    assert model.training and model.drop.training and not model.bn.training
    assert info.opset == 18 and read_metadata(info.path)["opset"] == 18
    assert info.external_data == tmp_path / "big.onnx.data" and info.external_data.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.onnx",
        "big.onnx.data",
        "big.onnx.json",
    ]
    assert verify(model, onnx_path=info.path).ok  # onnxruntime finds the side file


def test_compare_nan_and_shape():
    same = OutputStats("onnx", "y")
    nan = float("nan")
    compare(same, torch.tensor([1.0, nan]), torch.tensor([1.0, nan]), 2, 1e-5, 1e-4)
    assert same.ok and same.max_abs == 0
    new_nan = OutputStats("onnx", "y")
    compare(new_nan, torch.tensor([1.0, nan]), torch.tensor([1.0, 2.0]), 2, 1e-5, 1e-4)
    assert not new_nan.ok and new_nan.max_abs == float("inf") and new_nan.mismatched == 1
    shape = OutputStats("onnx", "y")
    compare(shape, torch.zeros(2, 3), torch.zeros(3, 2), 2, 1e-5, 1e-4)
    assert not shape.ok and "shape" in shape.note


def test_inputs_without_common_batch(tmp_path):
    class Lookup(nn.Module):
        def forward(self, x: Tensor, table: Tensor) -> Tensor:
            return x @ table.T

    model = Lookup()
    sample = (torch.randn(4, 3), torch.randn(10, 3))
    with pytest.raises(ExportError, match="same dim 0.*dynamic_batch=False"):
        to_onnx(model, tmp_path / "l.onnx", input_sample=sample)
    info = to_onnx(model, tmp_path / "l.onnx", input_sample=sample, dynamic_batch=False)
    report = verify(model, onnx_path=info.path, input_sample=sample)
    assert report.ok and report.batch_sizes == [] and report.stats["onnx"]["output"].numel == 120


class Detached(nn.Module):
    """A property that raises when detached, like TrainModule.trainer (Lightning's protocol)."""

    _jit_is_scripting = False
    __jit_unused_properties__ = ["owner"]

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.example_input_array = torch.randn(2, 3)

    @property
    def owner(self):
        if not self._jit_is_scripting:
            raise RuntimeError("not attached to an owner")
        return None

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)


@pytest.mark.parametrize("method", ["script", "trace"])
def test_jit_is_scripting_flag(tmp_path, method):
    model = Detached()
    to_torchscript(model, tmp_path / "d.pt", method=method)
    assert model._jit_is_scripting is False  # restored
    info = to_onnx(model, tmp_path / "d.onnx", exporter="legacy")  # legacy traces too
    assert verify(model, onnx_path=info.path, torchscript_path=tmp_path / "d.pt").ok
