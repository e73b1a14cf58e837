"""The flow on a real Prefect API and a real MLflow SQLite store: end to end, cache, failures,
resume, retries, the cache traps, reproducibility, DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tasks.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "data" / "digits.parquet"
SMALL = ["trainer.max_epochs=2", "model.kwargs={hidden: 32}", "registry.enabled=false",
         "retries.train.delays=[0]", "retries.evaluate.delays=[0]"]

pytestmark = pytest.mark.usefixtures("prefect_api")


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(REPO / "configs" / "default.yaml", [*SMALL, *overrides])


def _run(cfg: PipelineConfig):
    from flows.pipeline import training_pipeline

    return training_pipeline(cfg)


def _states(result) -> dict[str, str]:
    return {k: v.state for k, v in result.stages.items()}


def test_end_to_end_then_cached_rerun(project: Path) -> None:
    from prefect.client.orchestration import get_client

    cfg = _cfg("registry.enabled=true", "export.torchscript=true")
    first = _run(cfg)
    assert _states(first) == dict.fromkeys(
        ["prepare_data", "train", "evaluate", "export", "register", "promote"], "Completed")
    assert first.registered is not None and first.registered.promoted is True
    assert first.exported.onnx.exists() and first.exported.torchscript.exists()
    assert set(first.metrics) >= {"test_acc", "test_f1", "test_loss"}
    assert first.trained.mlflow_run_id
    ckpt_mtime = first.trained.checkpoint.stat().st_mtime_ns

    second = _run(cfg)
    states = _states(second)
    assert all(states[s] == "Cached" for s in ("prepare_data", "train", "evaluate", "export",
                                                "register")), states
    assert states["promote"] == "Completed"  # the gate always runs; same version stays champion
    assert second.registered.version == first.registered.version
    assert second.metrics == first.metrics
    assert first.trained.checkpoint.stat().st_mtime_ns == ckpt_mtime  # train body did not run

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts()
    md = [a for a in arts if a.key == "training-pipeline-summary"]
    assert md and "test_acc" in md[0].data and "Registry" in md[0].data

    # The CLI on what the run produced: predict with the champion, export, promote.
    from typer.testing import CliRunner

    from flows.cli import app

    cli = CliRunner()
    out = project / "pred.parquet"
    res = cli.invoke(app, ["predict", "--model", "digits-mlp@champion", "--input", str(DIGITS),
                           "--output", str(out)])
    assert res.exit_code == 0, res.output
    pred = pq.read_table(out)
    truth = pq.read_table(DIGITS).column("label").to_numpy()
    assert pred.num_rows == 1797
    assert (pred.column("prediction").to_numpy() == truth).mean() > 0.5
    res = cli.invoke(app, ["predict", "--model", "nope", "--input", str(DIGITS),
                           "--output", str(project / "x.parquet")])
    assert res.exit_code == 1 and not (project / "x.parquet").exists()
    res = cli.invoke(app, ["export", str(first.trained.checkpoint), "--out",
                           str(project / "exp"), "--set", "export.torchscript=false"])
    assert res.exit_code == 0, res.output
    assert (project / "exp" / "model.onnx").exists()
    res = cli.invoke(app, ["export", str(first.trained.checkpoint), "--onnx",
                           str(project / "named" / "m.onnx"), "--torchscript",
                           str(project / "named" / "ts" / "m.pt")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (project / "named").rglob("*")) == [
        "m.onnx", "m.onnx.json", "m.pt", "m.pt.json", "ts"]  # no temp folder left behind
    res = cli.invoke(app, ["promote", "digits-mlp", first.registered.version])
    assert res.exit_code in (0, 3) and "digits-mlp v" in res.output


def test_failed_stage_rerun_runs_only_it_and_later(project: Path) -> None:
    from flows.pipeline import training_pipeline

    bad = _cfg()
    # past the config's own check (and Prefect's revalidation of it): the evaluate stage fails
    bad.evaluation.gate.metric = "test_nope"
    state = training_pipeline.with_options(validate_parameters=False)(bad, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="evaluation.gate.metric: 'test_nope' is not among"):
        state.result()
    ckpts = list((project / ".trainflow" / "stages" / "train").glob("*/checkpoints/best*.ckpt"))
    assert len(ckpts) == 1
    mtime = ckpts[0].stat().st_mtime_ns

    fixed = _run(_cfg())
    states = _states(fixed)
    assert states["prepare_data"] == "Cached" and states["train"] == "Cached"
    assert states["evaluate"] == "Completed" and states["export"] == "Completed"
    assert ckpts[0].stat().st_mtime_ns == mtime


def test_changed_trainer_section_reruns_train_not_prepare(project: Path) -> None:
    a = _run(_cfg("export.onnx=false", "export.torchscript=false"))
    b = _run(_cfg("export.onnx=false", "export.torchscript=false", "trainer.batch_size=32"))
    assert _states(a)["train"] == "Completed"
    assert _states(b)["prepare_data"] == "Cached"
    assert _states(b)["train"] == "Completed" and _states(b)["evaluate"] == "Completed"
    assert a.trained.cache_key != b.trained.cache_key


def test_cache_traps_are_closed(project: Path, tmp_path: Path, monkeypatch) -> None:
    """Our keys are content hashes: a stage reruns when its code version or input content
    changes, even at the same path; a key is the same in another process."""
    import tasks.prepare_data as prep
    from flows.pipeline import training_pipeline

    data = tmp_path / "d.parquet"
    table = pq.read_table(DIGITS)
    pq.write_table(table, data)
    cfg = load_config(None, [f"data.path={data}"])
    stage_only = PipelineConfig(data=cfg.data)

    def prepare_state() -> str:
        from prefect import flow

        @flow
        def only_prepare() -> str:
            from flows.pipeline import _with_policy
            from tasks.settings import home_dir

            st = _with_policy(prep.prepare_data, stage_only.retries.prepare_data, home_dir())(
                stage_only.data, str(home_dir()), return_state=True)
            return st.name

        return only_prepare()

    assert prepare_state() == "Completed"
    assert prepare_state() == "Cached"  # across flow runs (Prefect's default policy never hits)
    # Same path, new content (rows dropped): a rerun, not a stale hit.
    pq.write_table(table.slice(0, 1500), data)
    assert prepare_state() == "Completed"
    # A helper changed (TASK_SOURCE would not see it): the code version is in the key.
    monkeypatch.setattr(prep, "CODE_VERSION", "prepare_data-test")
    assert prepare_state() == "Completed"
    monkeypatch.undo()
    # The key is a function of content only: another process computes the same one.
    key_here = prep._cache_key(None, {"cfg": stage_only.data})
    code = ("from pathlib import Path; from tasks.config import DataConfig; "
            "import tasks.prepare_data as p; "
            f"print(p._cache_key(None, {{'cfg': DataConfig(path=Path({str(data)!r}))}}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=REPO, check=True).stdout.strip().splitlines()[-1]
    assert other == key_here
    assert training_pipeline  # imported: the flow module sets nothing up in the repo


def test_deleted_outputs_are_rebuilt(project: Path) -> None:
    import shutil

    cfg = _cfg("export.onnx=false", "export.torchscript=false")
    first = _run(cfg)
    shutil.rmtree(first.data.root)
    second = _run(cfg)
    assert _states(second)["prepare_data"] == "Completed"
    assert second.data.content_hash == first.data.content_hash
    assert all(s.path.exists() for s in second.data.splits.values())


def test_retries_only_for_transient_errors(project: Path) -> None:
    from prefect import flow, task

    from tasks.types import DataError, retry_transient

    calls: dict[str, int] = {"io": 0, "data": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky(kind: str) -> int:
        calls[kind] += 1
        if kind == "io" and calls[kind] == 1:
            raise ConnectionResetError("lost the store")
        if kind == "data":
            raise DataError("data.label: column 'y' not in x.csv")
        return calls[kind]

    @flow
    def f(kind: str):
        return flaky(kind, return_state=True)

    assert f("io").result() == 2  # retried once, then fine
    with pytest.raises(DataError):
        f("data")
    assert calls["data"] == 1  # failed at once, no retry


def test_bad_data_fails_at_once_through_the_cli(project: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    bad = project / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n")
    res = CliRunner().invoke(app, ["run", "--set", f"data.path={bad}",
                                   "--set", "retries.prepare_data.delays=[30]"])
    assert res.exit_code == 1
    assert "error: data.label: column 'label' not in bad.csv (columns: a, b)" in res.output
    assert not list((project / ".trainflow" / "stages" / "prepare_data").glob("*/dataset.json"))


def test_train_killed_mid_run_resumes_from_its_checkpoint(project: Path) -> None:
    overrides = ["trainer.max_epochs=20", "export.onnx=false", "export.torchscript=false"]
    cfg = _cfg(*overrides)
    code = (
        "from pathlib import Path\n"
        "from tasks.config import load_config\n"
        "from tasks.settings import home_dir, stage_dir\n"
        "from tasks.prepare_data import prepare\n"
        "from tasks import train as T\n"
        f"cfg = load_config(Path({str(REPO / 'configs' / 'default.yaml')!r}), "
        f"{[*SMALL, *overrides]!r})\n"
        "data = prepare(cfg.data, stage_dir('prepare_data', home_dir()))\n"
        "key = T.stage_key(data, cfg.model, cfg.trainer)\n"
        "T.fit(data, cfg, stage_dir('train', home_dir()) / key, key, track=False)\n"
    )
    env = {**os.environ, "TRAINFLOW_PROJECT_DIR": str(project)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    train_dir = project / ".trainflow" / "stages" / "train"
    try:
        deadline = time.monotonic() + 180
        while not list(train_dir.glob("*/checkpoints/last.ckpt")):
            assert proc.poll() is None, "the training process ended before a checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not list(train_dir.glob("*/result.json"))  # it did not finish

    result = _run(cfg)
    assert _states(result)["train"] == "Completed"
    assert result.trained.resumed_from is not None
    assert result.trained.resumed_from.name == "last.ckpt"
    assert result.trained.epochs >= 19  # ran on to max_epochs


def test_two_fresh_runs_are_identical(project: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg("export.onnx=false", "export.torchscript=false")
    runs = []
    for name in ("one", "two"):
        monkeypatch.setenv("TRAINFLOW_PROJECT_DIR", str(tmp_path / name))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / name}/mlflow.db")
        runs.append(_run(cfg))
    a, b = runs
    assert _states(b)["train"] == "Completed"  # fresh project: nothing cached
    assert a.data.content_hash == b.data.content_hash
    wa = torch.load(a.trained.checkpoint, weights_only=True)["state_dict"]
    wb = torch.load(b.trained.checkpoint, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.metrics == b.metrics


@pytest.mark.ddp
def test_end_to_end_with_ddp_on_two_cpu_processes(project: Path) -> None:
    cfg = _cfg("trainer.devices=2", "trainer.strategy=ddp", "export.torchscript=false")
    result = _run(cfg)
    assert _states(result)["train"] == "Completed"
    assert result.metrics["test_acc"] > 0.2  # 10 classes; 2 short epochs split over 2 ranks
    # Synced metrics: the 2-rank test accuracy is over the whole test split, so it matches a
    # single-process test of the same checkpoint (within the sampler's one padded duplicate).
    from tasks.evaluate import run_evaluation

    one = run_evaluation(result.trained, result.data, _cfg(), "single", track=False)
    n_test = result.data.splits["test"].rows
    assert abs(one.metrics["test_acc"] - result.metrics["test_acc"]) <= 1.0 / n_test + 1e-6
