"""The ``trainflow`` command line (typer).

``trainflow run [CONFIG] [--set k=v ...]``, ``serve``, ``ui``, ``export``, ``promote``,
``predict``, ``sweep``. Bad input ends with one clear line on stderr and a non-zero exit code.
By default that line is the LAST line on stderr: what the libraries write there (Prefect's logs,
warnings, tracebacks, DDP workers' output) goes to ``.trainflow/logs/<command>-<time>.log``,
named on the line before it; ``trainflow --verbose ...`` shows everything on stderr instead.
Heavy libraries (prefect, torch, mlflow) are imported inside the commands, after the
environment is set: ``trainflow --help`` stays fast.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer

from flows.stack import app as stack_app

if TYPE_CHECKING:  # pydantic loads only when a command runs
    from tasks.config import PipelineConfig

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


_VERBOSE = False
_TERMINAL: Any = None  # where the one-line error goes while fd 2 goes to the log file
_LOG: Any = None  # the log file (a text stream) while one is in use


@app.callback()
def _options(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show logs and tracebacks on stderr, not in a file."),
    ] = False,
) -> None:
    global _VERBOSE
    _VERBOSE = verbose or os.environ.get("TRAINFLOW_VERBOSE") == "1"


@contextlib.contextmanager
def _logs_to_file(command: str) -> Iterator[None]:
    """Send fd 2 (Python's stderr, the libraries', child processes') to a log file in the
    project while the block runs; errors reach the user as one last line (:func:`_last_line`).

    An error that escapes the block is logged with its traceback and shown as that one line.
    In a real process fd 2 stays on the log until exit (Prefect flushes its last logs at exit);
    under a test runner that swapped ``sys.stderr`` for a buffer it is put back after the block.
    """
    global _TERMINAL, _LOG
    if _VERBOSE or _LOG is not None:
        yield
        return
    from tasks.settings import home_dir

    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = home_dir() / "logs" / f"{command}-{stamp}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", buffering=1)  # noqa: SIM115 - open until exit: late log lines
    except OSError:
        yield  # no writable project folder: everything stays on stderr
        return
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    sys.stderr.flush()
    saved = os.dup(2)
    _TERMINAL = os.fdopen(saved, "w", buffering=1, closefd=False) if real else sys.stderr
    os.dup2(log.fileno(), 2)
    _LOG = log
    atexit.register(_drop_empty_log, path)
    try:
        yield
    except (typer.Exit, click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - the traceback goes to the log, one line to the user
        _last_line(f"{type(err).__name__}: {err}")
        raise typer.Exit(1) from None
    finally:
        if not real:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            _TERMINAL = _LOG = None


def _drop_empty_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


def _last_line(message: str) -> None:
    """The error as the last line of the user's stderr, after the log file's path."""
    if _LOG is None:
        typer.echo(f"error: {message}", err=True)
        return
    if sys.exc_info()[0] is not None:
        traceback.print_exc(file=_LOG)  # the full story goes to the log
    _LOG.write(f"error: {message}\n")
    _LOG.flush()
    first = (message.strip().splitlines() or [""])[0]  # e.g. a DDP worker's traceback follows
    _TERMINAL.write(f"full log: {_LOG.name}\nerror: {first}\n")
    _TERMINAL.flush()


def _fail(message: str, code: int = 2) -> None:
    _last_line(message)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None):  # -> PipelineConfig
    from tasks.config import ConfigError, load_config

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
    interactive = sys.stderr.isatty()
    cfg = _load(config, set_)
    _check_data(cfg)
    _exit_on_signals()  # SIGTERM / SIGHUP: exit handlers stop Prefect's local API
    from tasks.settings import hold_project_lock

    try:  # before the log file takes stderr: a waiting run says so on the terminal
        hold_project_lock()  # one run per project folder, until this process exits
    except KeyboardInterrupt:
        _fail("interrupted while waiting for the other run", 130)
    with _logs_to_file("run"):
        _run_pipeline(cfg, interactive)


def _run_pipeline(cfg, interactive: bool) -> None:  # noqa: ANN001
    from tasks.settings import configure_environment

    configure_environment()
    if interactive and _VERBOSE:  # the bar needs the terminal's stderr
        os.environ.setdefault("TRAINFLOW_PROGRESS", "1")  # a progress bar while training
    from flows import ephemeral

    api = ephemeral.start()  # Prefect's local API starts on the other core during the imports
    from flows.pipeline import training_pipeline
    from tasks.config import ConfigError
    from tasks.types import DataError, StageError

    if api is not None:  # fill the wait for the API; with a server there is none to fill
        _preload(cfg)
    from flows.prefect_adapter import heartbeats_if_configured

    try:
        with api.use() if api is not None else heartbeats_if_configured():
            result = training_pipeline(cfg)
    except (ConfigError, DataError, StageError) as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted; run again to continue where it stopped", 130)
    except Exception as err:  # noqa: BLE001 - one line for the user; Prefect logged the trace
        _fail(f"{type(err).__name__}: {err}", 1)
    # The API stops at exit, after Prefect has sent the run's last logs and events to it.
    _print_summary(result)


def _preload(cfg) -> None:  # noqa: ANN001
    """Import mlflow and open the MLflow store (what every run needs: the cache checks and the
    promotion gate), and Prefect's flow and task engines (imported by the first flow run
    otherwise), while Prefect's local API is still starting. Not the model's module (torch)
    nor matplotlib: a cached run needs neither, and a fresh run's train stage imports them."""
    import prefect.flow_engine
    import prefect.task_engine  # noqa: F401

    with contextlib.suppress(Exception):  # an unusable store is reported by the stage itself
        from mlflow import MlflowClient

        from trainer.loggers.mlflow_store import check_reachable

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
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Serve `trainflow sweep` (default configs/sweep.yaml)")
    ] = False,
) -> None:
    """Serve the pipeline on a cron schedule (needs a Prefect server: PREFECT_API_URL)."""
    if sweep:
        config, cfg = _checked_sweep_config(config, set_)
    else:
        cfg = _load(config, set_)
    _check_data(cfg)
    from tasks.settings import configure_environment

    configure_environment()
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        _fail(f"--cron: not a valid cron expression: {cron!r} (e.g. '0 2 * * *')")
    if not os.environ.get("PREFECT_API_URL"):
        _fail(
            "schedules need a Prefect server: start one with "
            "`prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (see deployments/README.md)"
        )
    if sweep:
        from flows.sweep_flow import sweep_flow as served
    else:
        from flows.pipeline import training_pipeline as served

    served.serve(
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
    if not 1 <= port <= 65535:
        _fail(f"--port: must be 1-65535 (got {port})")
    from flows import tracking

    try:
        tracking.check_port_free(host, port)
    except tracking.TrackingUnreachable as err:
        _fail(str(err), 1)
    typer.echo(
        "Prefect UI: run `prefect server start --host 127.0.0.1` and open http://127.0.0.1:4200 "
        "(with PREFECT_API_URL=http://127.0.0.1:4200/api set, runs are recorded there)."
    )
    _exit_on_signals()  # SIGTERM / SIGHUP: stop the MLflow server too (run_ui's finally)
    try:
        code = tracking.run_ui(host=host, port=port, tracking_uri=tracking_uri)
    except tracking.TrackingUnreachable as err:
        _fail(str(err), 1)
    raise typer.Exit(code)


def _exit_on_signals() -> None:
    """SIGTERM and SIGHUP end this process like Ctrl-C does (an exception, so ``finally`` blocks
    and exit handlers run and stop the servers it started), not silently as by default."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, stop)


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
        try:  # the temp folder goes whatever happens (a failed export left it behind, empty)
            _export_into(checkpoint, out, cfg, targets)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    else:
        _export_into(checkpoint, out, cfg, targets)


def _export_into(checkpoint: Path, out: Path, cfg, targets: dict) -> None:  # noqa: ANN001
    """Export into ``out``; then move the files to their named ``targets`` if any."""
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
    except (StageError, CheckpointError) as err:
        _fail(str(err), 1)
    written = {"onnx": ref.onnx, "torchscript": ref.torchscript}
    for kind, target in targets.items():
        if target is not None and written[kind] is not None:
            target.resolve().parent.mkdir(parents=True, exist_ok=True)
            # a rename on one file system: the target appears whole or not at all
            for suffix in ("", ".json"):
                src = Path(f"{written[kind]}{suffix}")
                if src.exists():
                    os.replace(src, f"{target.resolve()}{suffix}")
            written[kind] = target
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
    import math

    from tasks.config import check_alias, check_model_name

    for what, check, value in (("NAME", check_model_name, name), ("--alias", check_alias, alias)):
        try:
            check(value)
        except ValueError as err:
            _fail(f"{what}: {err}")
    if not version.isdigit() or int(version) < 1:
        _fail(f"VERSION: must be a version number like 1 or 12 (got {version!r})")
    if mode not in ("max", "min"):
        _fail(f"--mode: must be max or min (got {mode!r})")
    if not (math.isfinite(min_delta) and min_delta >= 0):
        _fail(f"--min-delta: must be a finite number >= 0 (got {min_delta})")
    from tasks.registry import RegistryError
    from tasks.registry import promote as registry_promote
    from trainer.loggers.mlflow_store import TrackingUnreachable

    try:
        d = registry_promote(name, version, metric, mode, min_delta, alias=alias,
                             tracking_uri=tracking_uri)
    except (RegistryError, TrackingUnreachable, ValueError) as err:
        _fail(str(err), 1)
    verdict = f"promoted to @{d.alias}" if d.promoted else "not promoted"
    typer.echo(f"{d.name} v{d.version}: {verdict} ({d.reason})")
    if not d.promoted:
        raise typer.Exit(3)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="NAME or NAME@alias (default alias: champion)")],
    input: Annotated[Path, typer.Option("--input", help="CSV or parquet with named columns")],
    output: Annotated[Path, typer.Option("--output", help="Parquet (or .csv) file to write")],
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Add a probability column per class")
    ] = False,
    batch_rows: Annotated[int, typer.Option(help="Rows per batch", min=1)] = 65536,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Predict with a registered model: columns by name, labels in your own values.

    Classification writes the class label (``--probabilities``: one column per class, named
    after it); regression writes the predicted value. Reads only the registry.
    """
    if not input.is_file():
        _fail(f"--input {input}: not found")
    name, _, alias = model.partition("@")
    with _logs_to_file("predict"):
        from tasks.inference import InputError, Predictor, predict_file
        from tasks.registry import RegistryError

        try:
            predictor = Predictor.from_registry(name, alias or "champion", tracking_uri)
            n = predict_file(predictor, input, output, probabilities, batch_rows)
        except InputError as err:
            _fail(str(err) if str(err).startswith("--input") else f"--input {input}: {err}", 1)
        except RegistryError as err:
            _fail(str(err), 1)
        except ValueError as err:  # a bad model name
            _fail(str(err))
    typer.echo(f"wrote {n} predictions to {output} ({name} v{predictor.version})")


def _checked_sweep_config(
    config: Path | None, overrides: list[str] | None
) -> tuple[Path, PipelineConfig]:
    """The config path (default ``configs/sweep.yaml``) and the config, its space checked;
    a bad one ends the command with one line (``sweep`` and ``serve --sweep``)."""
    from flows.sweep import check_space
    from tasks.config import ConfigError

    if config is None:
        config = Path(__file__).resolve().parent.parent / "configs" / "sweep.yaml"
    cfg = _load(config, overrides)
    try:
        check_space(cfg)
    except ConfigError as err:
        _fail(str(err))
    return config, cfg


@app.command()
def sweep(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config with a sweep: section (configs/sweep.yaml)")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Finished trials to reach")] = None,
    parallel: Annotated[int | None, typer.Option(help="Trials run at once")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set k=v")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL, e.g. postgresql://...")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Run trials on this Dask scheduler (tcp://host:port)")
    ] = None,
) -> None:
    """Tune with Optuna (cached, resumable trials), then promote the best like `run`."""
    extra = [f"sweep.{k}={v}" for k, v in (("trials", trials), ("parallel", parallel)) if v]
    for name, v in (("--trials", trials), ("--parallel", parallel)):
        if v is not None and v < 1:
            _fail(f"{name}: must be at least 1 (got {v})")
    config, cfg = _checked_sweep_config(config, [*(set_ or []), *extra])
    if not cfg.data.path.exists():
        _fail(f"data.path: file not found: {cfg.data.path}")
    from tasks.settings import configure_environment

    configure_environment()
    from flows.sweep import default_storage, study_name
    from flows.sweep_lock import StudyBusy, acquire
    from tasks.settings import home_dir

    try:  # before Prefect starts: a second sweep of the study touches nothing
        acquire(storage or cfg.sweep.storage or default_storage(home_dir()), study_name(cfg))
    except StudyBusy as err:
        _fail(str(err), 1)
    interactive = sys.stderr.isatty()
    _exit_on_signals()  # SIGTERM / SIGHUP: exit handlers stop Prefect's local API
    with _logs_to_file("sweep"):  # as `run`: the libraries' output goes to the log file
        result = _run_sweep(cfg, storage, dask_address, interactive)
    _print_sweep(result)


def _run_sweep(cfg, storage: str | None, dask_address: str | None,  # noqa: ANN001
               interactive: bool) -> Any:
    if interactive and _VERBOSE:  # the bar needs the terminal's stderr
        os.environ.setdefault("TRAINFLOW_PROGRESS", "1")
    from flows import ephemeral

    api = ephemeral.start()
    from flows.prefect_adapter import heartbeats_if_configured
    from flows.sweep_flow import run_sweep
    from tasks.config import ConfigError
    from tasks.types import DataError, StageError

    try:
        with api.use() if api is not None else heartbeats_if_configured():
            return run_sweep(cfg, storage, dask_address)
    except (ConfigError, DataError, StageError) as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted; run again to continue where it stopped", 130)
    except Exception as err:  # noqa: BLE001 - one line for the user; Prefect logged the trace
        _fail(f"{type(err).__name__}: {err}", 1)


def _print_sweep(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"sweep {result.study_name} ({result.finished} trials finished)")
    for col in ("trial", "state", "epochs", "value", "params"):
        table.add_column(col)
    for t in result.trials:
        state = t.state + (" (cached)" if t.cached else "")
        value = "" if t.value is None else f"{t.value:.4f}"
        table.add_row(str(t.number), state, str(t.epochs), value, json.dumps(t.params))
    console.print(table)
    console.print(f"best trial {result.best_number}: {result.best_value:.4f} "
                  f"{json.dumps(result.best_params)}")
    reg = result.pipeline.registered
    if reg is not None:
        verdict = f"promoted to @{reg.alias}" if reg.promoted else "not promoted"
        console.print(f"registry {reg.name} v{reg.version}: {verdict} ({reg.decision})")
    console.print(f"study {result.storage}  mlflow run {result.parent_run_id}")


_EXIT_CODE = 1  # what the process ends with (main sets it from how the command ended)


def _end_without_teardown() -> None:
    """The last exit handler: everything else has run (Prefect's flush, the local API's stop,
    the log file's last lines). End now instead of letting Python tear down every module of
    prefect, mlflow and torch one by one (1-5 s of a cached run's wall time on 2 cores)."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, _LOG):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_EXIT_CODE)


def main() -> None:
    """Entry point of the ``trainflow`` command (and ``python -m flows.cli``)."""
    global _EXIT_CODE
    atexit.register(_end_without_teardown)  # the first registered: it runs last
    try:
        app()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            _EXIT_CODE = exc.code or 0
        raise  # a message (str) is printed by Python: exit code 1
    except KeyboardInterrupt:
        _EXIT_CODE = 130
        raise
    _EXIT_CODE = 0


if __name__ == "__main__":
    sys.exit(main())
