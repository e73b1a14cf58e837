"""``trainflow sweep``: tune a config's keys with an Optuna study, then promote the best trial.

The command and the ``sweep:`` section's meaning: which keys are searched (checked by applying
them like ``--set``), what the study is called, where it is stored. The flow that runs it is
in ``flows/sweep_flow.py``; heavy libraries load only when the command runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # the CLI imports this module: pydantic loads only when the command runs
    from tasks.config import PipelineConfig, SweepConfig

# ------------------------------------------------------------------------- config → trials


def sweep_section(cfg: PipelineConfig) -> SweepConfig:
    """The config's ``sweep:`` section; refused in one line when missing or empty."""
    from tasks.config import ConfigError

    if cfg.sweep is None or not cfg.sweep.space:
        raise ConfigError(
            "sweep.space: name at least one config key to search, e.g. "
            "sweep: {space: {trainer.batch_size: {type: int, low: 16, high: 128}}}"
        )
    return cfg.sweep


def _probe_values(param: Any) -> list[Any]:
    """Values that stand for the whole range: every choice, or both ends."""
    if param.type == "categorical":
        return list(param.choices)
    cast = int if param.type == "int" else float
    return [cast(param.low), cast(param.high)]


def with_params(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """``cfg`` with each dotted key set to its value, validated like ``--set`` overrides."""
    from tasks.config import apply_overrides, validate_config

    raw = cfg.model_dump(mode="json")
    items = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    return validate_config(apply_overrides(raw, items))


def check_space(cfg: PipelineConfig) -> None:
    """Every space key must be a config key: apply each one (each choice, both ends) and
    validate it like a ``--set`` override."""
    from tasks.config import ConfigError

    sweep = sweep_section(cfg)
    for key, param in sweep.space.items():
        if key.split(".")[0] == "sweep":
            raise ConfigError(f"sweep.space.{key}: a sweep cannot search its own settings")
        try:
            for value in _probe_values(param):
                with_params(cfg, {key: value})
        except ConfigError as err:
            raise ConfigError(f"sweep.space.{key}: not a usable config key ({err})") from None


def study_name(cfg: PipelineConfig) -> str:
    """A name that stays the same for the same sweep (not counting ``trials``/``parallel``)."""
    sweep = sweep_section(cfg)
    what = {
        "data": cfg.data.digest(),
        "model": cfg.model.digest(),
        "trainer": cfg.trainer.digest(),
        "sweep": sweep.model_dump(mode="json", exclude={"trials", "parallel", "storage"}),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return sweep.study_name or f"sweep-{digest[:12]}"


def default_storage(home: Path) -> str:
    """The project's study database: ``sqlite:///<project>/.trainflow/optuna.db``."""
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'optuna.db'}"


def distributions(sweep: SweepConfig) -> dict[str, Any]:
    """The search space as Optuna distributions."""
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for key, p in sweep.space.items():
        if p.type == "categorical":
            out[key] = d.CategoricalDistribution(p.choices)
        elif p.type == "int":
            out[key] = d.IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            out[key] = d.FloatDistribution(p.low, p.high, log=p.log)
    return out




# ---------------------------------------------------------------------------- the command


def checked_sweep_config(
    config: Path | None, overrides: list[str] | None
) -> tuple[Path, PipelineConfig]:
    """The config path (default ``configs/sweep.yaml``) and the config, its space checked;
    a bad one ends the command with one line (``sweep`` and ``serve --sweep``)."""
    from flows.cli import _fail, _load
    from tasks.config import ConfigError

    if config is None:
        config = Path(__file__).resolve().parent.parent / "configs" / "sweep.yaml"
    cfg = _load(config, overrides)
    try:
        check_space(cfg)
    except ConfigError as err:
        _fail(str(err))
    return config, cfg


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
    from flows.cli import _fail

    extra = [f"sweep.{k}={v}" for k, v in (("trials", trials), ("parallel", parallel)) if v]
    for name, v in (("--trials", trials), ("--parallel", parallel)):
        if v is not None and v < 1:
            _fail(f"{name}: must be at least 1 (got {v})")
    config, cfg = checked_sweep_config(config, [*(set_ or []), *extra])
    if not cfg.data.path.exists():
        _fail(f"data.path: file not found: {cfg.data.path}")
    from tasks.settings import configure_environment

    configure_environment()
    from flows.sweep_lock import StudyBusy, acquire
    from tasks.settings import home_dir

    try:  # before Prefect starts: a second sweep of the study touches nothing
        acquire(storage or cfg.sweep.storage or default_storage(home_dir()), study_name(cfg))
    except StudyBusy as err:
        _fail(str(err), 1)
    if sys.stderr.isatty():
        os.environ.setdefault("TRAINFLOW_PROGRESS", "1")
    from flows import ephemeral

    api = ephemeral.start()
    from flows.sweep_flow import run_sweep
    from tasks.config import ConfigError
    from tasks.types import DataError, StageError

    try:
        with api.use() if api is not None else contextlib.nullcontext():
            result = run_sweep(cfg, storage, dask_address)
    except (ConfigError, DataError, StageError) as err:
        _fail(str(err), 1)
    except Exception as err:  # noqa: BLE001 - one line for the user; Prefect logged the trace
        _fail(f"{type(err).__name__}: {err}", 1)
    _print(result)


def _print(result: Any) -> None:
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
