"""The pipeline's configuration: one YAML file validated with pydantic.

Unknown keys and wrong types are errors that name the key path (``trainer.max_epochs: ...``).
Loading a config file puts its folder first on ``sys.path`` (tasks/imports.py): the modules named
by ``model.class_path`` and ``data.datamodule`` may sit beside it.
``--set trainer.max_epochs=3`` style overrides are applied to the raw mapping before validation,
so they are checked exactly like the file. Relative paths in ``data.path`` are resolved against
the config file's folder; a config built without a file points at the shipped example data.
What depends on ``data.task`` is filled in after validation when the config leaves it out (the
model, the evaluation metrics, the gate and its direction) and refused when it does not fit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

EXAMPLE_DATA = Path(__file__).resolve().parent.parent / "models" / "data" / "digits.parquet"


class ConfigError(ValueError):
    """A configuration problem; the message names the key path and what to change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """A stable content hash of this section (sorted-key JSON)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


class SplitConfig(_Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1 (got {total:g})")
        return self


def _check_import_path(v: str) -> str:
    mod, sep, name = v.partition(":")
    if not sep or not mod or not name.isidentifier():
        raise ValueError(f"must look like 'package.module:ClassName' (got {v!r})")
    return v


class DataConfig(_Section):
    """Where the data comes from and how it is split."""

    path: Path = EXAMPLE_DATA
    format: Literal["auto", "csv", "parquet"] = "auto"
    label: str = "label"
    features: list[str] | None = None  # None: every column but the label
    categorical: list[str] = Field(default_factory=list)
    task: Literal["classification", "regression"] = "classification"
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = 42
    nan_policy: Literal["error", "drop", "fill_zero"] = "error"
    batch_rows: int = Field(262_144, gt=0)
    # ``module:Class`` of a DataModule (trainer/datamodule.py) that turns the prepared splits
    # into batches of any shape (images, sequences); None: rows of the feature matrix
    datamodule: str | None = None

    @field_validator("datamodule")
    @classmethod
    def _import_path(cls, v: str | None) -> str | None:
        return v if v is None else _check_import_path(v)


# The model a config gets when it names none: the built-in tabular model for data.task.
DEFAULT_MODELS = {
    "classification": "models.tabular:TabularClassifier",
    "regression": "models.tabular:TabularRegressor",
}


class ModelConfig(_Section):
    """The TrainModule: its import path (``pkg.mod:Class``) and keyword arguments."""

    class_path: str | None = None  # None: DEFAULT_MODELS[data.task]
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("class_path")
    @classmethod
    def _import_path(cls, v: str | None) -> str | None:
        return v if v is None else _check_import_path(v)

    @field_validator("kwargs")
    @classmethod
    def _kwargs_taken(cls, kwargs: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Keyword arguments the class does not take, and negative sizes, are refused now, not
        after data preparation (a class that cannot be imported is the train stage's error).
        The signature is read from the source (no import: the model's module imports torch,
        which a cached run does not need); the class is imported only when that cannot say."""
        import importlib

        from tasks.imports import constructor_signature

        if not kwargs or not info.data.get("class_path"):  # nothing to check; the default
            return kwargs  # model: when resolved
        mod, _, name = info.data["class_path"].partition(":")
        try:
            signature = constructor_signature(info.data["class_path"])
            if signature is None:
                signature = inspect.signature(getattr(importlib.import_module(mod), name).__init__)
            params = signature.parameters
        except Exception:  # noqa: BLE001 - reported by the train stage with its own message
            return kwargs
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(kwargs) - set(params) - {"self"})
            if unknown:
                taken = ", ".join(k for k in params if k != "self")
                raise ValueError(f"{name} takes no {', '.join(unknown)} (takes {taken})")
        for key, value in kwargs.items():
            default = params[key].default if key in params else None
            if isinstance(value, int) and not isinstance(value, bool) and value < 0 \
                    and isinstance(default, int) and not isinstance(default, bool) \
                    and default > 0:
                raise ValueError(f"{key} must be > 0 like its default {default} (got {value})")
        return kwargs


class CheckpointConfig(_Section):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"


class EarlyStoppingConfig(_Section):
    """Stop training when ``monitor`` (a validation metric) has not improved for ``patience``
    epochs; the best checkpoint (``trainer.checkpoint``) is the one evaluated."""

    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainerConfig(_Section):
    """Trainer flags (see trainer.Trainer) and the data loader's batch size."""

    max_epochs: int = Field(200, gt=0)  # an upper bound: early stopping ends most fits sooner
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    batch_size: int = Field(64, gt=0)
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "cpu"
    devices: int = Field(1, gt=0)
    strategy: Literal["auto", "ddp"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    seed: int = 0
    deterministic: bool = True
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    num_threads: int | None = Field(1, gt=0)  # per process; None: torch's default


# What the evaluate stage can compute, per task, and the key each is reported under.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1", "precision", "recall", "auroc"),
    "regression": ("mse", "rmse", "mae", "r2"),
}
DEFAULT_METRICS = {"classification": ["accuracy", "f1"], "regression": ["rmse", "mae", "r2"]}
DEFAULT_GATES = {"classification": "test_acc", "regression": "test_r2"}
LOWER_IS_BETTER = frozenset({"mse", "rmse", "mae"})
MetricName = Literal["accuracy", "f1", "precision", "recall", "auroc", "mse", "rmse", "mae", "r2"]


def metric_key(name: str) -> str:
    """The reported key of a metric: ``test_acc`` for accuracy, else ``test_<name>``."""
    return "test_acc" if name == "accuracy" else f"test_{name}"


class GateConfig(_Section):
    metric: str | None = None  # None: DEFAULT_GATES[data.task]
    mode: Literal["min", "max"] | None = None  # None: from the metric (min for errors)
    min_delta: float = Field(0.0, ge=0, allow_inf_nan=False)


class EvaluationConfig(_Section):
    """What the evaluate stage computes on the test split, and the promotion gate."""

    metrics: list[MetricName] | None = None  # None: DEFAULT_METRICS[data.task]
    gate: GateConfig = Field(default_factory=GateConfig)


class ExportConfig(_Section):
    onnx: bool = True
    torchscript: bool = True
    tolerance: float = Field(1e-4, gt=0, allow_inf_nan=False)


_ALIAS_RULE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def check_model_name(name: str) -> str:
    """``name`` if it is a legal registered model name, else ValueError stating the rule."""
    from tasks.registry import NAME_RULE, NAME_RULE_TEXT  # stdlib-only at import

    if not NAME_RULE.match(name):
        raise ValueError(f"must be {NAME_RULE_TEXT} (got {name!r})")
    return name


def name_from_path(path: Path) -> str:
    """A registry model name made from a data file's stem (``wine.csv`` -> ``wine``): characters
    the registry refuses become '-', a leading one that is not a letter or digit is dropped."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:128].rstrip("-")
    return name or "model"


def check_alias(alias: str) -> str:
    """``alias`` if MLflow accepts it as a model alias, else ValueError stating the rule."""
    if not _ALIAS_RULE.match(alias):
        raise ValueError(
            f"must be 1-255 letters, digits, '_' or '-' (got {alias!r})"
        )
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"{alias!r} is reserved by MLflow (latest, v<number>); choose another")
    return alias


class RegistryConfig(_Section):
    enabled: bool = True
    model_name: str | None = Field(None, min_length=1)  # None: from data.path's stem
    alias: str = Field("champion", min_length=1)

    @field_validator("model_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return v if v is None else check_model_name(v)

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        check_alias(v)
        if v == "challenger":
            raise ValueError("'challenger' is moved to every new version by register; "
                             "choose another alias to promote to")
        return v


class TrackingConfig(_Section):
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite under the pipeline home
    experiment: str = Field("trainflow", min_length=1)


class StageRetry(_Section):
    retries: int = Field(2, ge=0)
    delays: list[float] = Field(default_factory=lambda: [1.0, 5.0])

    @field_validator("delays")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(d < 0 for d in v):
            raise ValueError(f"retry delays must be >= 0 (got {v})")
        return v


class RetryConfig(_Section):
    """Retries for transient errors, per stage (bad config and bad data never retry)."""

    prepare_data: StageRetry = Field(default_factory=StageRetry)
    train: StageRetry = Field(default_factory=StageRetry)
    evaluate: StageRetry = Field(default_factory=StageRetry)
    export: StageRetry = Field(default_factory=StageRetry)
    registry: StageRetry = Field(default_factory=StageRetry)


class SearchParam(_Section):
    """One dimension of a sweep's search space: ``float``/``int`` in ``[low, high]``, or
    ``categorical`` over ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices or self.low is not None or self.high is not None or self.log:
                raise ValueError("categorical: give choices (a non-empty list) and no low/high/log")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type}: give low and high, not choices")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(
                f"{self.type}: needs low < high (got low={self.low}, high={self.high})"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"log: needs low > 0 (got {self.low})")
        return self


class SweepConfig(_Section):
    """``trainflow sweep``: an Optuna study over config keys (``space``: dotted key → range)."""

    space: dict[str, SearchParam] = Field(default_factory=dict)
    objective: str = "val_loss"  # a validation metric the Trainer logs
    mode: Literal["min", "max"] = "min"
    trials: int = Field(8, gt=0)
    parallel: int = Field(1, gt=0)
    sampler: Literal["tpe", "random"] = "tpe"  # seeded from trainer.seed
    startup_trials: int = Field(4, ge=0)  # TPE draws at random before it models the results
    pruner: Literal["median", "none"] = "median"
    warmup_epochs: int = Field(1, ge=0)  # the median pruner never stops a trial this early
    storage: str | None = None  # None: sqlite:///<project>/.trainflow/optuna.db
    study_name: str | None = None  # None: derived from the data, config and space


class PipelineConfig(_Section):
    """The whole pipeline configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    sweep: SweepConfig | None = None  # only `trainflow sweep` reads it

    @model_validator(mode="after")
    def _resolve_for_task(self) -> PipelineConfig:
        """Fill what depends on data.task (model, metrics, gate) and refuse what does not fit."""
        task = self.data.task
        if self.model.class_path is None:
            self.model.class_path = DEFAULT_MODELS[task]
        if self.registry.model_name is None:
            self.registry.model_name = name_from_path(self.data.path)
        ev = self.evaluation
        if ev.metrics is None:
            ev.metrics = list(DEFAULT_METRICS[task])
        if not ev.metrics:
            raise ValueError("evaluation.metrics: name at least one metric (or remove the key)")
        unfit = [m for m in ev.metrics if m not in TASK_METRICS[task]]
        if unfit:
            raise ValueError(
                f"evaluation.metrics: {', '.join(unfit)} does not fit data.task {task} "
                f"(choose from {', '.join(TASK_METRICS[task])})"
            )
        ev.metrics = list(dict.fromkeys(ev.metrics))  # each once, in the order given
        gate = ev.gate
        keys = {metric_key(m): m for m in ev.metrics}
        if gate.metric is None:
            gate.metric = DEFAULT_GATES[task]
            if gate.metric not in keys:  # the default gate's metric is not asked for
                gate.metric = metric_key(ev.metrics[0])
        if gate.metric not in keys:
            raise ValueError(
                f"evaluation.gate.metric: {gate.metric!r} is not among the metrics the evaluate "
                f"stage computes ({', '.join(keys)}); add it to evaluation.metrics"
            )
        natural = "min" if keys[gate.metric] in LOWER_IS_BETTER else "max"
        if gate.mode is None:
            gate.mode = natural
        elif gate.mode != natural:
            raise ValueError(
                f"evaluation.gate.mode: {gate.mode} would promote worse models "
                f"({gate.metric} is better when {'lower' if natural == 'min' else 'higher'}); "
                f"set it to {natural} or remove it"
            )
        es = self.trainer.early_stopping
        if es is not None and self.data.split.val == 0:
            raise ValueError(
                "trainer.early_stopping: needs a validation split (data.split.val is 0); "
                "set data.split.val > 0 or trainer.early_stopping: null"
            )
        return self


_NOT_A_MAPPING = "<root>: the config must be a mapping of sections (got {})"


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if not loc and e["type"] == "value_error":  # a whole-config check names its own keys
            lines.append(msg.removeprefix("Value error, "))
            continue
        loc = loc or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check the spelling)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg} (got {e['input']!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _parse_value(text: str) -> Any:
    """An override's value, read as YAML (``3`` → int, ``[a, b]`` → list, ``x`` → str)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a raw config mapping (a new mapping is returned)."""
    out: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.max_epochs=3")
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                path = ".".join(parts[: i + 1])
                raise ConfigError(f"{path}: is not a section, cannot set {key}")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def validate_config(raw: Any, base_dir: Path | None = None) -> PipelineConfig:
    """Validate a raw mapping into a PipelineConfig; ConfigError names every bad key path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(_NOT_A_MAPPING.format(type(raw).__name__))
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    if base_dir is not None and not cfg.data.path.is_absolute():
        cfg.data.path = (base_dir / cfg.data.path).resolve()
    return cfg


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read a YAML config (None: built-in defaults on the shipped example), apply overrides."""
    raw: Any = {}
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {p}: not found") from None
        except OSError as err:
            raise ConfigError(f"config file {p}: cannot be read ({err.strerror})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p}{where}: not valid YAML") from None
        base_dir = p.resolve().parent
        # the user's modules (model.class_path, data.datamodule) beside the config come first
        from tasks.imports import use_code_dir

        use_code_dir(base_dir)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(_NOT_A_MAPPING.format(type(raw).__name__))
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_config(raw, base_dir)
