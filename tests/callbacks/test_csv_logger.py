import csv
import os
import pickle

import yaml

from trainer.loggers import CSVLogger


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_columns_grow_as_new_keys_appear(tmp_path):
    lg = CSVLogger(tmp_path)
    lg.log_metrics({"loss": 1.5}, step=0)
    lg.log_metrics({"loss": 1.0}, step=1)
    lg.save()
    assert lg.log_dir == str(tmp_path / "trainflow_logs" / "version_0")
    lg.log_metrics({"val_loss": 2.0, "epoch": 0}, step=1)
    lg.log_metrics({"loss": 0.5}, step=2)
    lg.finalize("success")
    rows = read(lg.metrics_file_path)
    with open(lg.metrics_file_path) as f:
        assert f.readline().strip() == "step,loss,val_loss,epoch"
    assert [r["step"] for r in rows] == ["0", "1", "1", "2"]
    assert rows[0]["loss"] == "1.5" and rows[0]["val_loss"] == ""
    assert rows[2]["val_loss"] == "2.0" and rows[3]["loss"] == "0.5"
    assert not [f for f in os.listdir(lg.log_dir) if ".tmp" in f]


def test_append_without_new_keys_and_pickling(tmp_path):
    lg = CSVLogger(tmp_path, name="exp", version=3)
    lg.log_metrics({"a": 1.0}, step=0)
    lg.save()
    lg2 = pickle.loads(pickle.dumps(lg))  # as a spawned worker would get it
    lg2.log_metrics({"a": 2.0}, step=1)
    lg2.save()
    assert [r["a"] for r in read(tmp_path / "exp" / "version_3" / "metrics.csv")] == ["1.0", "2.0"]


def test_versions_count_up_and_hparams_yaml(tmp_path):
    assert CSVLogger(tmp_path).version == 0
    first = CSVLogger(tmp_path)
    first.log_hyperparams({"lr": 0.1, "layers": [32, 64], "obj": object()})
    assert CSVLogger(tmp_path).version == 1
    assert CSVLogger(tmp_path, version="named").log_dir.endswith("named")
    with open(os.path.join(first.log_dir, "hparams.yaml")) as f:
        hp = yaml.safe_load(f)
    assert hp["lr"] == 0.1 and hp["layers"] == [32, 64] and "object" in hp["obj"]


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    lg = CSVLogger(tmp_path)
    lg.log_hyperparams({"a": 1})
    lg.log_metrics({"x": 1.0}, step=0)
    lg.finalize("success")
    assert not os.path.exists(tmp_path / "trainflow_logs")


def test_a_resumed_run_continues_its_own_file(tmp_path):
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("failed")
    again = CSVLogger(tmp_path, version=0)  # a new process resuming the same version
    again.log_metrics({"loss": 0.5}, step=1)
    again.log_metrics({"loss": 0.25, "val_loss": 0.75}, step=2)
    again.finalize("success")
    rows = read(again.metrics_file_path)
    assert [(r["step"], r["loss"], r["val_loss"]) for r in rows] == [
        ("0", "1.0", ""), ("1", "0.5", ""), ("2", "0.25", "0.75")]
