"""Plots and lineage helpers (no store needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tasks.registry import code_version, config_hash, export_content_hash, flow_run_id
from trainer.loggers.plots import group_metric_keys, plot_confusion_matrix, plot_metric_curves


def test_curves_grouped_by_family_and_nan_skipped(tmp_path: Path) -> None:
    groups = group_metric_keys(["train_loss_epoch", "val_loss", "val_acc", "lr-SGD"])
    assert groups == {
        "loss": ["train_loss_epoch", "val_loss"],
        "acc": ["val_acc"],
        "lr-SGD": ["lr-SGD"],
    }
    png = plot_metric_curves(
        {"val_loss": [(0, 1.0), (1, float("nan")), (2, 0.5)]}, tmp_path / "c.png"
    )
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_metric_curves({"x": [(0, float("nan"))]}, tmp_path / "none.png") is None


def test_confusion_matrix_png_and_bad_input(tmp_path: Path) -> None:
    png = plot_confusion_matrix([[3, 1], [0, 4]], tmp_path / "cm.png", ["a", "b"], normalize=True)
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="must be square"):
        plot_confusion_matrix([[1, 2, 3]], tmp_path / "x.png")
    with pytest.raises(ValueError, match="need 2 names"):
        plot_confusion_matrix([[1, 0], [0, 1]], tmp_path / "x.png", ["only-one"])


def test_config_hash_is_canonical() -> None:
    @dataclasses.dataclass
    class Cfg:
        lr: float
        layers: list[int]

    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash(Cfg(0.1, [1])) == config_hash({"lr": 0.1, "layers": [1]})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_content_hash_same_model_inside_or_beside_the_onnx_file(exports, tmp_path: Path) -> None:
    import onnx

    exp = exports[0]
    model = onnx.load(str(exp.onnx))
    side = tmp_path / "side.onnx"
    onnx.save_model(
        model, str(side), save_as_external_data=True, location="side.onnx.data", size_threshold=0
    )
    assert (tmp_path / "side.onnx.data").is_file()
    assert export_content_hash(side) == export_content_hash(exp.onnx)
    assert export_content_hash(exp.onnx) != export_content_hash(exports[1].onnx)
    assert export_content_hash(exp.onnx, exp.torchscript) != export_content_hash(exp.onnx)


def test_code_version_and_flow_run_id_outside_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    version = code_version()
    assert len(version.split("+")[0]) == 40 or version.startswith("trainflow==")
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    import sys

    if "prefect" not in sys.modules:
        assert flow_run_id() is None
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "abc")
    if "prefect" not in sys.modules:
        assert flow_run_id() == "abc"


def test_gate_decides_both_ways_and_refuses_what_it_cannot_compare() -> None:
    from tasks.registry.gate import decide

    base = dict(version="2", metric="acc", mode="max", min_delta=0.01, alias="champion",
                recorded_metrics=["acc"], verified="true", require_verified=True,
                champion_version="1", champion_value=0.80)
    assert decide(**{**base, "candidate_value": 0.82})[0]
    assert not decide(**{**base, "candidate_value": 0.805})[0]  # gain within min_delta
    assert decide(**{**base, "mode": "min", "candidate_value": 0.70})[0]
    assert not decide(**{**base, "mode": "min", "candidate_value": 0.82})[0]
    assert decide(**{**base, "champion_version": None, "champion_value": None,
                     "candidate_value": 0.1}) == (True, "no champion yet")
    promoted, reason = decide(**{**base, "candidate_value": None})
    assert not promoted and "no recorded metric 'acc'" in reason
    promoted, reason = decide(**{**base, "candidate_value": 0.9, "verified": "unknown"})
    assert not promoted and "not verified" in reason
    assert decide(**{**base, "candidate_value": 0.9, "verified": "unknown",
                     "require_verified": False})[0]
    assert not decide(**{**base, "candidate_value": float("nan")})[0]
