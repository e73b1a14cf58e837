"""Stage 4: export the best checkpoint to ONNX and TorchScript and check both against eager.

The ONNX exporter is chosen per model by trainer.export (the fast TorchScript-based one for a
model it traces without a warning, like the demo MLP: the stage takes well under a second;
dynamo otherwise); the file's metadata says which and why.

Files go to ``<home>/stages/export/<key>/`` (``model.onnx``, ``model.ts``); the key hashes the
checkpoint's content, the export section and the code version. A mismatch beyond
``export.tolerance`` fails the stage without retries.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.config import PipelineConfig
from tasks.train import import_class
from tasks.types import ExportRef, StageError, TrainResult, content_key

CODE_VERSION = "export-2"  # 2: the ONNX exporter is chosen per model (other bytes)


def stage_key(trained: TrainResult, cfg: PipelineConfig) -> str:
    """Cache key: checkpoint content, export section, code version."""
    return content_key(
        {
            "stage": "export",
            "code": CODE_VERSION,
            "checkpoint": trained.checkpoint_sha256,
            "export": cfg.export.digest(),
        }
    )


def run_export(trained: TrainResult, cfg: PipelineConfig, root: Path, key: str) -> ExportRef:
    """Run the stage without Prefect."""
    # imported here: `trainer` imports torch, which the cached path of a run never needs
    from trainer.export import ExportError, to_onnx, to_torchscript, verify
    from trainer.fileio import file_sha256

    if not (cfg.export.onnx or cfg.export.torchscript):
        return ExportRef(checkpoint_sha256=trained.checkpoint_sha256, cache_key=key,
                         code_version=CODE_VERSION)
    module = import_class(cfg.model.class_path).load_from_checkpoint(str(trained.checkpoint))
    module.eval()
    root.mkdir(parents=True, exist_ok=True)
    onnx_path = root / "model.onnx" if cfg.export.onnx else None
    ts_path = root / "model.ts" if cfg.export.torchscript else None
    try:
        if onnx_path is not None:
            to_onnx(module, onnx_path)
        if ts_path is not None:
            to_torchscript(module, ts_path, method="trace")
        report = verify(
            module, onnx_path, ts_path, atol=cfg.export.tolerance, rtol=cfg.export.tolerance
        )
    except ExportError as err:  # mismatch or unsupported op: retrying will not help
        raise StageError(f"export: {err}") from err
    parity = {
        f"{backend}.{output}.max_abs": float(s.max_abs)
        for backend, outs in report.stats.items()
        for output, s in outs.items()
    }
    return ExportRef(
        onnx=onnx_path,
        onnx_sha256=file_sha256(onnx_path) if onnx_path else None,
        torchscript=ts_path,
        torchscript_sha256=file_sha256(ts_path) if ts_path else None,
        parity=parity,
        checkpoint_sha256=trained.checkpoint_sha256,
        cache_key=key,
        code_version=CODE_VERSION,
    )


def _cache_key(context: object, params: dict) -> str:
    return "export-" + stage_key(params["trained"], params["cfg"])


@task(name="export", cache_key_fn=_cache_key, persist_result=True)
def export(trained: TrainResult, cfg: PipelineConfig, home: str) -> ExportRef:
    """Prefect task: ONNX + TorchScript, verified against eager PyTorch."""
    from tasks.settings import stage_dir

    key = stage_key(trained, cfg)
    return run_export(trained, cfg, stage_dir("export", Path(home)) / key, key)
