"""The ``trainflow`` command line (typer).

``trainflow run [CONFIG] [--set k=v ...]``, ``serve``, ``ui``, ``export``, ``promote``,
``predict``. Bad input ends with one clear line on stderr and a non-zero exit code.
Heavy libraries (prefect, torch, mlflow) are imported inside the commands, after the
environment is set: ``trainflow --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="trainflow",
    help="Train, evaluate, export and register a model with one command (Prefect + MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
    from flows.config import ConfigError
    from flows.pipeline import training_pipeline
    from tasks.types import DataError, StageError

    try:
        result = training_pipeline(cfg)
    except (ConfigError, DataError, StageError) as err:
        _fail(str(err), 1)
    except Exception as err:  # noqa: BLE001 - one line for the user; Prefect logged the trace
        _fail(f"{type(err).__name__}: {err}", 1)
    _print_summary(result)


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
) -> None:
    """Open the MLflow UI on the embedded store; prints how to open the Prefect UI."""
    typer.echo(
        "Prefect UI: run `prefect server start --host 127.0.0.1` and open http://127.0.0.1:4200 "
        "(with PREFECT_API_URL=http://127.0.0.1:4200/api set, runs are recorded there)."
    )
    try:
        from flows import tracking
    except ImportError as err:  # pragma: no cover - MLflow part not installed
        _fail(f"MLflow tracking is not available: {err}", 1)
    run_ui = getattr(tracking, "run_ui", None)
    if run_ui is None:
        _fail("flows.tracking.run_ui is not available in this build", 1)
    run_ui(host=host, port=port)


def main() -> None:
    """Entry point for ``python -m flows.cli``."""
    app()


if __name__ == "__main__":
    sys.exit(main())
