"""The pipeline's export stage on the demo model: the fast exporter, verified, same bytes twice."""

from __future__ import annotations

from pathlib import Path

import torch

from tasks.config import load_config
from tasks.export import run_export
from tasks.types import TrainResult
from trainer.checkpoint import save_checkpoint
from trainer.export import read_metadata
from trainer.fileio import file_sha256

REPO = Path(__file__).resolve().parents[2]


def test_export_stage_takes_the_fast_path_for_the_demo(tmp_path: Path) -> None:
    from models.digits import DigitsMLP

    torch.manual_seed(0)
    module = DigitsMLP()
    ckpt = save_checkpoint(
        {
            "module_class": "models.digits:DigitsMLP",
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
        },
        tmp_path / "best.ckpt",
    )
    trained = TrainResult(
        checkpoint=ckpt, checkpoint_sha256=file_sha256(ckpt), metrics={}, epochs=1,
        global_step=1, data_hash="d", config_hash="c", cache_key="k", code_version="t",
    )  # fmt: skip
    cfg = load_config(REPO / "configs" / "default.yaml", [])
    refs = [run_export(trained, cfg, tmp_path / f"out{i}", f"key{i}") for i in range(2)]
    ref = refs[0]
    assert read_metadata(ref.onnx)["exporter"] == "legacy"
    assert read_metadata(ref.torchscript)["exporter"] == "torchscript-trace"
    assert set(ref.parity) == {"onnx.output.max_abs", "torchscript.output.max_abs"}
    assert max(ref.parity.values()) <= cfg.export.tolerance
    assert (refs[1].onnx_sha256, refs[1].torchscript_sha256) == (ref.onnx_sha256,
                                                                ref.torchscript_sha256)
