"""The pipeline's configuration: one YAML file validated with pydantic.

Unknown keys and wrong types are errors that name the key path (``trainer.max_epochs: ...``).
``--set trainer.max_epochs=3`` style overrides are applied to the raw mapping before validation,
so they are checked exactly like the file. Relative paths in ``data.path`` are resolved against
the config file's folder; a config built without a file points at the shipped example data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class ModelConfig(_Section):
    """The TrainModule: its import path (``pkg.mod:Class``) and keyword arguments."""

    class_path: str = "models.digits:DigitsMLP"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("class_path")
    @classmethod
    def _import_path(cls, v: str) -> str:
        mod, sep, name = v.partition(":")
        if not sep or not mod or not name.isidentifier():
            raise ValueError(f"must look like 'package.module:ClassName' (got {v!r})")
        return v


class CheckpointConfig(_Section):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"


class TrainerConfig(_Section):
    """Trainer flags (see trainer.Trainer) and the data loader's batch size."""

    max_epochs: int = Field(15, gt=0)
    batch_size: int = Field(64, gt=0)
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "cpu"
    devices: int = Field(1, gt=0)
    strategy: Literal["auto", "ddp"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    seed: int = 0
    deterministic: bool = True
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    num_threads: int | None = Field(1, gt=0)  # per process; None: torch's default


class GateConfig(_Section):
    metric: str = "test_acc"
    mode: Literal["min", "max"] = "max"
    min_delta: float = Field(0.0, ge=0)


class EvaluationConfig(_Section):
    metrics: list[Literal["accuracy", "f1", "precision", "recall", "mse", "mae"]] = Field(
        default_factory=lambda: ["accuracy", "f1"]
    )
    gate: GateConfig = Field(default_factory=GateConfig)


class ExportConfig(_Section):
    onnx: bool = True
    torchscript: bool = True
    tolerance: float = Field(1e-4, gt=0)


class RegistryConfig(_Section):
    enabled: bool = True
    model_name: str = Field("digits-mlp", min_length=1)
    alias: str = Field("champion", min_length=1)


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


_NOT_A_MAPPING = "<root>: the config must be a mapping of sections (got {})"


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
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
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(_NOT_A_MAPPING.format(type(raw).__name__))
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_config(raw, base_dir)
