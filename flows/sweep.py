"""``trainflow sweep``: tune a config's keys with an Optuna study, then promote the best trial.

The ``sweep:`` section's meaning: which keys are searched (checked by applying them like
``--set``), what the study is called, where it is stored. The flow that runs it is in
``flows/sweep_flow.py``, the command in ``flows/cli.py``; heavy libraries load only when the
command runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic loads only when the command runs
    from tasks.config import PipelineConfig, SweepConfig


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
