"""``trainflow sweep`` on a real Prefect API, a real Optuna SQLite study and a real MLflow store:
the best trial registered with its lineage, pruning, cached reruns, continuing an interrupted
study, seeded reproducibility, trials on a Dask cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.config import ConfigError, PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
FAST = ["trainer.max_epochs=3", "retries.train.delays=[0]", "retries.evaluate.delays=[0]",
        "export.torchscript=false"]

pytestmark = pytest.mark.usefixtures("prefect_api")


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(REPO / "configs" / "sweep.yaml", [*FAST, *overrides])


def _sweep(cfg: PipelineConfig, **kwargs):  # noqa: ANN003, ANN202
    from flows.sweep_flow import run_sweep

    return run_sweep(cfg, **kwargs)


def _study(result):  # noqa: ANN001, ANN202
    import optuna

    return optuna.load_study(study_name=result.study_name, storage=result.storage)


def test_space_key_that_is_not_a_config_key_is_refused() -> None:
    from flows.sweep import check_space

    cfg = _cfg("sweep.space={trainer.lrr: {type: float, low: 0.1, high: 1}}")
    with pytest.raises(ConfigError, match=r"sweep\.space\.trainer\.lrr: .*trainer\.lrr: unknown"):
        check_space(cfg)
    bad_type = _cfg("sweep.space={trainer.batch_size: {type: categorical, choices: [16, x]}}")
    with pytest.raises(ConfigError, match=r"sweep\.space\.trainer\.batch_size"):
        check_space(bad_type)
    with pytest.raises(ConfigError, match=r"space\.model\.kwargs\.lr: float: needs low < high"):
        _cfg("sweep.space={model.kwargs.lr: {type: float, low: 1, high: 0.1}}")


def test_sweep_promotes_best_prunes_and_continues_without_retraining(project: Path) -> None:
    import optuna
    from mlflow import MlflowClient

    from flows.sweep import distributions
    from tasks.registry import lineage

    # An interrupted sweep: 3 trials finished, a 4th left RUNNING by a killed process.
    first = _sweep(_cfg("sweep.trials=3"))
    assert [t.number for t in first.trials] == [0, 1, 2]
    study = _study(first)
    study.sampler = optuna.samplers.RandomSampler(seed=1)  # the killed trial's params, seeded
    killed_params = study.ask(distributions(_cfg().sweep)).params

    second = _sweep(_cfg("sweep.trials=6"))
    assert second.study_name == first.study_name
    assert not any(t.cached for t in second.trials), "a finished trial was run again"
    assert second.trials[0].params == killed_params  # the killed trial is asked again first
    assert second.finished == 6
    trials = _study(second).get_trials()
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the killed one, re-asked
    done = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(done) == 6 and all(t.intermediate_values for t in done)
    pruned = [t for t in done if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    for t in pruned:  # stopped before the last epoch (3)
        assert max(t.intermediate_values) < 2
    assert all(r.epochs < 3 for r in second.trials if r.state == "pruned")

    # The best trial went through evaluate → export → register → promote, with its lineage;
    # the gate chose the champion between it and the 3-trial sweep's best (version 1).
    reg = second.pipeline.registered
    assert reg is not None and reg.version == "2"
    accs = {v: lineage(reg.name, v)["metrics"]["test_acc"] for v in ("1", "2")}
    assert reg.promoted == (accs["2"] > accs["1"]), reg.decision
    best = _study(second).best_trial
    assert second.best_number == best.number
    client = MlflowClient()
    tags = client.get_model_version(reg.name, reg.version).tags
    assert tags["trainflow.sweep"] == second.study_name
    assert tags["trainflow.trial"] == str(best.number)
    assert tags["trainflow.sweep_run_id"] == second.parent_run_id
    # One parent run (best params, plots) and a nested child run per finished trial.
    parent = client.get_run(second.parent_run_id)
    assert {f"best.{k}" for k in best.params} <= set(parent.data.tags)
    arts = {a.path for a in client.list_artifacts(second.parent_run_id, "optuna")}
    assert {"optuna/history.png", "optuna/importances.png"} <= arts
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{second.parent_run_id}'")
    assert len(children) == 6
    assert all("sweep.model.kwargs.lr" in c.data.params for c in children)
    assert all("val_loss" in c.data.metrics for c in children)

    # The same command again: nothing to train; a child run lost (its write never happened,
    # e.g. a kill right after the trial was told) is written from the trial's curves.
    lost = next(c for c in children if c.data.tags["trainflow.trial"] != str(best.number))
    client.delete_run(lost.info.run_id)
    third = _sweep(_cfg("sweep.trials=6"))
    assert third.trials == [] and third.finished == 6
    assert third.best_number == second.best_number
    again = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{second.parent_run_id}'")
    assert sorted(c.data.tags["trainflow.trial"] for c in again) == sorted(
        c.data.tags["trainflow.trial"] for c in children)
    rewritten = next(c for c in again if c.data.tags["trainflow.trial"] == lost.data.tags[
        "trainflow.trial"])
    assert rewritten.data.params == lost.data.params
    assert rewritten.data.metrics.keys() == lost.data.metrics.keys()


def test_the_database_holds_every_trial_as_the_sweep_saw_it(project: Path) -> None:
    """The sweep asks and tells in memory and writes each trial to the database when asked and
    when told (flows/sweep_study.py): after the run, the database has every trial finished,
    with its state, value and one intermediate value per validation."""
    import optuna

    result = _sweep(_cfg("sweep.trials=4", "trainer.max_epochs=2", "registry.enabled=false",
                         "export.onnx=false"))
    trials = _study(result).get_trials()
    assert [t.number for t in trials] == [r.number for r in result.trials] == [0, 1, 2, 3]
    for t, r in zip(trials, result.trials, strict=True):
        assert t.state.name.lower() == r.state
        assert sorted(t.intermediate_values) == list(range(r.epochs))
        assert t.params == r.params
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == r.value == min(t.intermediate_values.values())
        else:  # pruned: Optuna records its last report as its value
            assert t.value == t.intermediate_values[r.epochs - 1]
    assert result.best_number == _study(result).best_trial.number


def test_seeded_sweep_is_reproducible(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    cfg = _cfg("sweep.trials=4", "registry.enabled=false", "export.onnx=false")
    runs = []
    for name in ("one", "two"):
        monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path / name))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / name}/mlflow.db")
        runs.append(_sweep(cfg))
    a, b = runs
    assert not any(t.cached for t in b.trials)  # fresh project: nothing cached
    assert [(t.params, t.value, t.state) for t in a.trials] == [
        (t.params, t.value, t.state) for t in b.trials]
    wa = torch.load(a.pipeline.trained.checkpoint, weights_only=True)["state_dict"]
    wb = torch.load(b.pipeline.trained.checkpoint, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_trials_on_a_dask_cluster_match_one_at_a_time(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from distributed import LocalCluster

    # Order-independent: every trial a seeded random draw (startup_trials >= trials), no pruner
    # (the median depends on which trials have reported when); parallel rounds ask the same.
    cfg = _cfg("sweep.trials=4", "sweep.startup_trials=8", "sweep.pruner=none",
               "registry.enabled=false", "export.onnx=false")
    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path / "one"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'one'}/mlflow.db")
    one = _sweep(cfg)
    monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path / "two"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'two'}/mlflow.db")
    parallel = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"parallel": 2})})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        two = _sweep(parallel, dask_address=cluster.scheduler_address)
    assert not any(t.cached for t in two.trials)
    assert two.best_params == one.best_params and two.best_value == one.best_value
    assert [(t.params, t.value) for t in one.trials] == [(t.params, t.value) for t in two.trials]


class _Killed(Exception):
    pass


def test_a_trial_killed_mid_fit_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import optuna

    from flows.sweep import distributions, with_params
    from tasks.prepare_data import prepare
    from tasks.train import fit
    from tasks.trial import run_trial, trial_key
    from trainer.callbacks import Callback

    class KillAfterFirstEpoch(Callback):
        def on_train_epoch_start(self, trainer, module) -> None:  # noqa: ANN001
            if trainer.current_epoch == 1:  # epoch 0 and its checkpoints are done
                raise _Killed

    cfg = _cfg("tracking.uri=sqlite:///" + str(tmp_path / "mlflow.db"))
    data = prepare(cfg.data, tmp_path / "data")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    t = study.ask(distributions(cfg.sweep))
    tcfg = with_params(cfg, t.params)
    key = trial_key(data, tcfg)
    root = tmp_path / "trial" / key
    with pytest.raises(_Killed):  # the first attempt dies after one epoch, leaving last.ckpt
        fit(data, tcfg, root, key, track=False, callbacks=[KillAfterFirstEpoch()])
    assert (root / "checkpoints" / "last.ckpt").exists() and not (root / "trial.json").exists()

    outcome = run_trial(data, tcfg, root, key, t)
    assert outcome.trained.resumed_from == root / "checkpoints" / "last.ckpt"
    assert outcome.epochs == 3 and sorted(outcome.curve) == [1, 2]  # epoch 0 was not redone


def test_cli_refuses_a_bad_space_key_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINFLOW_PROJECT_DIR": str(tmp_path)}
    bad = "sweep.space={trainer.lrr: {type: float, low: 0.1, high: 1}}"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", "--set", bad],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sweep.space.trainer.lrr: not a usable config key "
        "(trainer.lrr: unknown key (remove it or check the spelling))"]
    assert not (tmp_path / ".trainflow").exists()  # refused before anything ran


def test_cli_sweep_keeps_the_libraries_output_in_its_log_file(tmp_path: Path) -> None:
    """As `run`: Prefect's logs and the trials' model summaries go to the log file; a failing
    sweep ends with the log's path and one line saying why."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINFLOW_PROJECT_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "sweep", "--trials", "1",
         "--set", "trainer.max_epochs=1", "--set", "sweep.objective=nope"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr[-3000:]
    assert lines[0].startswith("full log: ") and lines[1].startswith("error: sweep.objective:")
    log = Path(lines[0].removeprefix("full log: "))
    assert log.parent == tmp_path / ".trainflow" / "logs"
    assert "Beginning flow run" in log.read_text()  # Prefect's logs are there instead
