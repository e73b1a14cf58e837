"""Config validation: every error names its key path; overrides are checked like the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.config import ConfigError, PipelineConfig, apply_overrides, load_config

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_yaml_matches_builtin_defaults() -> None:
    from_file = load_config(REPO / "configs" / "default.yaml")
    builtin = PipelineConfig()
    assert from_file.data.path == builtin.data.path
    assert from_file.data.path.exists()
    # Sections that feed cache keys are the same whether read from the file or built in.
    for section in ("data", "evaluation", "export", "tracking"):
        assert getattr(from_file, section).digest() == getattr(builtin, section).digest(), section
    # the example names its model; built in, the name comes from the data file (digits.parquet)
    assert (from_file.registry.model_name, builtin.registry.model_name) == ("digits-mlp", "digits")
    assert from_file.registry.model_dump(exclude={"model_name"}) == builtin.registry.model_dump(
        exclude={"model_name"})
    # ... except the example's model and its fixed 15 epochs: a config without `model:` gets the
    # built-in tabular model for data.task, trained with early stopping.
    assert from_file.model.class_path == "models.digits:DigitsMLP"
    assert builtin.model.class_path == "models.tabular:TabularClassifier"
    assert from_file.trainer.early_stopping is None and builtin.trainer.early_stopping is not None
    differ = {"max_epochs", "early_stopping"}
    assert from_file.trainer.model_dump(exclude=differ) == builtin.trainer.model_dump(
        exclude=differ)


@pytest.mark.parametrize(
    ("data_file", "name"),
    [("wine.csv", "wine"), ("my sales (2024).parquet", "my-sales-2024"),
     ("_private.csv", "private"), ("v1.2_data.csv", "v1.2_data"), ("___.csv", "model")],
)
def test_registry_name_defaults_to_the_data_files_stem(tmp_path: Path, data_file: str,
                                                       name: str) -> None:
    from tasks.config import check_model_name

    cfg = load_config(_write(tmp_path, f"data: {{path: '{data_file}'}}\n"))
    assert cfg.registry.model_name == name == check_model_name(name)
    named = load_config(_write(tmp_path, "data: {path: wine.csv}\nregistry: {model_name: w}\n"))
    assert named.registry.model_name == "w"  # a name the config gives is kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trainer:\n  max_epoch: 3\n", "trainer.max_epoch: unknown key"),
        ("trainer:\n  max_epochs: many\n", "trainer.max_epochs: Input should be a valid integer"),
        ("trainer:\n  max_epochs: 0\n", "trainer.max_epochs: Input should be greater than 0"),
        ("trainer:\n  devices: -1\n", "trainer.devices: Input should be greater than 0 (got -1)"),
        ("trainer:\n  strategy: fsdp\n", "trainer.strategy: Input should be 'auto' or 'ddp'"),
        ("data:\n  split: {train: 0.8, val: 0.2, test: 0.2}\n",
         "data.split: train + val + test must be 1 (got 1.2)"),
        ("data:\n  nan_policy: ignore\n", "data.nan_policy: Input should be"),
        ("model:\n  class_path: models.digits.DigitsMLP\n",
         "model.class_path: must look like 'package.module:ClassName'"),
        ("evaluation:\n  gate: {min_delta: -1}\n", "evaluation.gate.min_delta: Input should be"),
        ("retries:\n  train: {delays: [-1]}\n", "retries.train.delays: retry delays must be >= 0"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("- a\n- b\n", "<root>: the config must be a mapping of sections (got list)"),
    ],
)
def test_config_errors_name_the_key_path(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert expected in str(err.value)


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "trainer: {max_epochs: x, devices: 0}\nexport: {onx: 1}\n"))
    msg = str(err.value)
    assert "trainer.max_epochs" in msg and "trainer.devices" in msg and "export.onx" in msg


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="line [23]: not valid YAML"):
        load_config(_write(tmp_path, "a: 1\nb: [\n"))


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    cfg = load_config(None, ["trainer.max_epochs=3", "evaluation.metrics=[accuracy]",
                             "data.features=null", "trainer.deterministic=false"])
    assert cfg.trainer.max_epochs == 3
    assert cfg.evaluation.metrics == ["accuracy"]
    assert cfg.trainer.deterministic is False
    with pytest.raises(ConfigError, match="trainer.max_epochs: Input should be a valid integer"):
        load_config(None, ["trainer.max_epochs=lots"])
    with pytest.raises(ConfigError, match="trainer.nope: unknown key"):
        load_config(None, ["trainer.nope=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["trainer.max_epochs"])
    with pytest.raises(ConfigError, match="trainer.max_epochs: is not a section"):
        apply_overrides({"trainer": {"max_epochs": 3}}, ["trainer.max_epochs.x=1"])


def test_relative_data_path_is_read_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    cfg = load_config(_write(tmp_path, "data: {path: d/x.csv}\n"))
    assert cfg.data.path == (tmp_path / "d" / "x.csv").resolve()


def test_section_digest_changes_only_with_its_section() -> None:
    a = load_config(None)
    b = load_config(None, ["trainer.max_epochs=7"])
    assert a.data.digest() == b.data.digest()
    assert a.trainer.digest() != b.trainer.digest()


def test_cli_bad_config_is_one_line_and_nonzero(tmp_path: Path, monkeypatch) -> None:
    from flows.cli import app

    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path))
    bad = _write(tmp_path, "trainer:\n  max_epochs: -3\n")
    res = CliRunner().invoke(app, ["run", str(bad)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == ["error: trainer.max_epochs: Input should be greater than 0 (got -3)"]
    res = CliRunner().invoke(app, ["run", "--set", "data.path=nowhere.parquet"])
    assert res.exit_code == 2 and "data.path: file not found" in res.output
    assert not (tmp_path / ".trainflow").exists()  # nothing written


def test_cli_serve_needs_a_real_server(tmp_path: Path, monkeypatch) -> None:
    from flows.cli import app

    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    res = CliRunner().invoke(app, ["serve", "--cron", "0 2 * * *"])
    assert res.exit_code == 2
    assert "schedules need a Prefect server" in res.output
