"""The ``trainflow`` command line (typer).

``trainflow run [CONFIG] [--set k=v ...]``, ``serve``, ``ui``, ``export``, ``promote``,
``predict``. Bad input ends with one clear line on stderr and a non-zero exit code.
Heavy libraries (prefect, torch, mlflow) are imported inside the commands, after the
environment is set: ``trainflow --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from flows.stack import app as stack_app

app = typer.Typer(
    name="trainflow",
    help="Train, evaluate, export and register a model with one command (Prefect + MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")  # team mode: `trainflow stack up|down|status`

ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="YAML config; none: the shipped default on the example data."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set trainer.max_epochs=3"),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None):  # -> PipelineConfig
    from flows.config import ConfigError, load_config

    if config is None:
        default = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
        config = default if default.exists() else None
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(str(err))


def _check_data(cfg) -> None:  # noqa: ANN001
    if not cfg.data.path.exists():
        _fail(f"data.path: file not found: {cfg.data.path}")


@app.command()
def run(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Run the whole pipeline: prepare → train → evaluate → export → register → promote."""
    cfg = _load(config, set_)
    _check_data(cfg)
    from flows.settings import configure_environment

    configure_environment()
    if sys.stderr.isatty():
        os.environ.setdefault("TRAINFLOW_PROGRESS", "1")  # a progress bar while training
    from flows import ephemeral

    api = ephemeral.start()  # Prefect's local API starts on the other core during the imports
    from flows.config import ConfigError
    from flows.pipeline import training_pipeline
    from tasks.types import DataError, StageError

    _preload(cfg)
    try:
        with api.use() if api is not None else contextlib.nullcontext():
            result = training_pipeline(cfg)
    except (ConfigError, DataError, StageError) as err:
        _fail(str(err), 1)
    except Exception as err:  # noqa: BLE001 - one line for the user; Prefect logged the trace
        _fail(f"{type(err).__name__}: {err}", 1)
    # The API stops at exit, after Prefect has sent the run's last logs and events to it.
    _print_summary(result)


def _preload(cfg) -> None:  # noqa: ANN001
    """Import what runs need (the model's module for the train stage's key, mlflow for tracking
    and the promotion gate, matplotlib for the logged curves) and open the MLflow store, while
    Prefect's local API is still starting."""
    import importlib

    with contextlib.suppress(Exception):  # a bad class path is reported by the stage itself
        importlib.import_module(cfg.model.class_path.partition(":")[0])
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")  # what the logger's plots use (no display)
        import matplotlib.pyplot  # noqa: F401
    with contextlib.suppress(Exception):  # an unusable store is reported by the stage itself
        from mlflow import MlflowClient

        from flows.tracking import check_reachable

        uri = check_reachable(cfg.tracking.uri)  # opens (or creates) the store once
        if cfg.registry.enabled:
            MlflowClient(uri, uri).search_registered_models(max_results=1)  # the registry's too


def _print_summary(result) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="trainflow run", show_lines=False)
    table.add_column("stage")
    table.add_column("state")
    table.add_column("seconds", justify="right")
    for name, rec in result.stages.items():
        table.add_row(name, rec.state, f"{rec.seconds:.2f}")
    console.print(table)
    if result.metrics:
        m = Table(title="metrics")
        m.add_column("metric")
        m.add_column("value", justify="right")
        for k, v in sorted(result.metrics.items()):
            m.add_row(k, f"{v:.4f}")
        console.print(m)
    reg = result.registered
    if reg is not None:
        verdict = f"promoted to @{reg.alias}" if reg.promoted else "not promoted"
        console.print(f"registry {reg.name} v{reg.version}: {verdict} ({reg.decision})")
    if result.trained is not None and result.trained.mlflow_run_id:
        console.print(f"mlflow run {result.trained.mlflow_run_id}")
    if result.data is not None:
        console.print(f"data {result.data.content_hash[:12]}  home {result.home}")


@app.command()
def serve(
    config: ConfigArg = None,
    set_: SetOpt = None,
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 2 * * *'")] = "0 2 * * *",
    name: Annotated[str, typer.Option(help="Deployment name")] = "nightly",
) -> None:
    """Serve the pipeline on a cron schedule (needs a Prefect server: PREFECT_API_URL)."""
    cfg = _load(config, set_)
    _check_data(cfg)
    if not os.environ.get("PREFECT_API_URL"):
        _fail(
            "schedules need a Prefect server: start one with "
            "`prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (see deployments/README.md)"
        )
    try:
        from croniter import croniter

        if not croniter.is_valid(cron):
            _fail(f"--cron: not a valid cron expression: {cron!r}")
    except ImportError:
        pass
    from flows.settings import configure_environment

    configure_environment()
    from flows.pipeline import training_pipeline

    training_pipeline.serve(
        name=name,
        cron=cron,
        parameters={"config": str(config.resolve()) if config else None, "overrides": set_ or []},
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI")] = None,
) -> None:
    """Open the MLflow UI on the embedded store; prints how to open the Prefect UI."""
    typer.echo(
        "Prefect UI: run `prefect server start --host 127.0.0.1` and open http://127.0.0.1:4200 "
        "(with PREFECT_API_URL=http://127.0.0.1:4200/api set, runs are recorded there)."
    )
    from flows import tracking

    try:
        code = tracking.run_ui(host=host, port=port, tracking_uri=tracking_uri)
    except tracking.TrackingUnreachable as err:
        _fail(str(err), 1)
    raise typer.Exit(code)


TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow URI; default: $MLFLOW_TRACKING_URI or .trainflow"),
]


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by the train stage")],
    out: Annotated[Path, typer.Option(help="Folder for model.onnx / model.ts")] = Path("export"),
    onnx: Annotated[Path | None, typer.Option(help="Write ONNX here (only named formats)")] = None,
    torchscript: Annotated[Path | None, typer.Option(help="... and/or TorchScript here")] = None,
    config: Annotated[Path | None, typer.Option(help="Config whose export section to use")] = None,
    set_: SetOpt = None,
) -> None:
    """Export a checkpoint to ONNX and TorchScript and check both against eager PyTorch."""
    cfg = _load(config, set_)
    if not checkpoint.is_file():
        _fail(f"checkpoint {checkpoint}: not found")
    targets = {"onnx": onnx, "torchscript": torchscript}
    if onnx or torchscript:  # explicit paths: export those formats only, into a folder beside them
        cfg = cfg.model_copy(update={"export": cfg.export.model_copy(
            update={k: v is not None for k, v in targets.items()})})
        first = (onnx or torchscript).resolve()
        first.parent.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=".export-", dir=first.parent))
    from tasks.export import run_export
    from tasks.prepare_data import file_sha256
    from tasks.types import StageError, TrainResult
    from trainer.checkpoint import CheckpointError, load_checkpoint

    try:
        class_path = load_checkpoint(checkpoint).get("module_class") or cfg.model.class_path
    except CheckpointError as err:
        _fail(str(err), 1)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"class_path": class_path})})
    sha = file_sha256(checkpoint)
    trained = TrainResult(
        checkpoint=checkpoint.resolve(), checkpoint_sha256=sha, metrics={}, epochs=0,
        global_step=0, data_hash="", config_hash="", cache_key="cli", code_version="cli",
    )
    try:
        ref = run_export(trained, cfg, out.resolve(), "cli")
    except StageError as err:
        if onnx or torchscript:
            shutil.rmtree(out, ignore_errors=True)
        _fail(str(err), 1)
    written = {"onnx": ref.onnx, "torchscript": ref.torchscript}
    try:
        for kind, target in targets.items():
            if target is not None and written[kind] is not None:
                target.resolve().parent.mkdir(parents=True, exist_ok=True)
                # a rename on one file system: the target appears whole or not at all
                for suffix in ("", ".json"):
                    src = Path(f"{written[kind]}{suffix}")
                    if src.exists():
                        os.replace(src, f"{target.resolve()}{suffix}")
                written[kind] = target
    finally:
        if onnx or torchscript:
            shutil.rmtree(out, ignore_errors=True)
    for p in written.values():
        if p is not None:
            typer.echo(f"wrote {p}")
    for k, v in ref.parity.items():
        typer.echo(f"parity {k} {v:.3g}")


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name")],
    version: Annotated[str, typer.Argument(help="Version to promote")],
    metric: Annotated[str, typer.Option(help="Gate metric (a metric.* tag)")] = "test_acc",
    mode: Annotated[str, typer.Option(help="max or min")] = "max",
    min_delta: Annotated[float, typer.Option(help="Required improvement")] = 0.0,
    alias: Annotated[str, typer.Option(help="Alias to move")] = "champion",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move ALIAS to VERSION if it beats the current champion on METRIC."""
    if mode not in ("max", "min"):
        _fail(f"--mode: must be max or min (got {mode!r})")
    from tasks.registry import RegistryError
    from tasks.registry import promote as registry_promote

    try:
        d = registry_promote(name, version, metric, mode, min_delta, alias=alias,
                             tracking_uri=tracking_uri)
    except RegistryError as err:
        _fail(str(err), 1)
    verdict = f"promoted to @{d.alias}" if d.promoted else "not promoted"
    typer.echo(f"{d.name} v{d.version}: {verdict} ({d.reason})")
    if not d.promoted:
        raise typer.Exit(3)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="NAME or NAME@alias (default alias: champion)")],
    input: Annotated[Path, typer.Option("--input", help="CSV or parquet of features")],
    output: Annotated[Path, typer.Option("--output", help="Parquet file to write")],
    label: Annotated[str, typer.Option(help="Column to ignore if present")] = "label",
    batch_rows: Annotated[int, typer.Option(help="Rows per batch")] = 65536,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Batch predictions with onnxruntime from a registered model; parquet out."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    if not input.is_file():
        _fail(f"--input {input}: not found")
    name, _, alias = model.partition("@")
    from tasks.registry import RegistryError, load_champion

    try:
        sess = load_champion(name, alias=alias or "champion", tracking_uri=tracking_uri)
    except RegistryError as err:
        _fail(str(err), 1)
    meta = sess.get_inputs()[0]
    n_in = meta.shape[1] if len(meta.shape) == 2 and isinstance(meta.shape[1], int) else None
    fmt = "csv" if input.name.lower().endswith((".csv", ".csv.gz")) else "parquet"
    try:
        dataset = ds.dataset(str(input), format=fmt)
    except (pa.ArrowInvalid, OSError) as err:
        _fail(f"--input {input}: not readable as {fmt}: {err}")
    features = [c for c in dataset.schema.names if c != label]
    if n_in is not None and len(features) != n_in:
        _fail(f"--input: {len(features)} feature columns, the model takes {n_in}")
    tmp = output.with_name(f".{output.name}.tmp")
    writer = None
    n = 0
    try:
        for batch in dataset.scanner(columns=features, batch_size=batch_rows).to_batches():
            x = np.column_stack(
                [batch.column(c).to_numpy(zero_copy_only=False) for c in features]
            ).astype(np.float32)
            logits = sess.run(None, {meta.name: x})[0]
            cols = {"prediction": pa.array(np.asarray(logits).argmax(1))}
            e = np.exp(logits - logits.max(1, keepdims=True))
            cols["score"] = pa.array((e.max(1) / e.sum(1)).astype(np.float32))
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            n += len(x)
        if writer is not None:
            writer.close()
            writer = None
            os.replace(tmp, output)
    except Exception as err:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        _fail(f"predict: {type(err).__name__}: {err}", 1)
    finally:
        if writer is not None:
            writer.close()
            tmp.unlink(missing_ok=True)
    version = getattr(sess, "trainflow_version", "?")
    typer.echo(f"wrote {n} predictions to {output} ({name} v{version})")


def main() -> None:
    """Entry point for ``python -m flows.cli``."""
    app()


if __name__ == "__main__":
    sys.exit(main())
