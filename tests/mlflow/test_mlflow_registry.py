"""The registry on a real SQLite MLflow store: register, lineage, gate, race, load champion."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import registry
from tasks.registry import (
    RegistryError,
    load_champion,
    load_champion_torchscript,
    promote,
    register_model,
    validate_model_name,
)

REPO = Path(__file__).resolve().parents[2]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, uri)


def _alias(client, name: str, alias: str) -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def _register(uri: str, name: str, exp, acc: float, **kw) -> registry.RegisteredVersion:
    kw.setdefault("export_metrics", {"max_abs_diff": 1e-7, "atol": 1e-5})
    return register_model(
        name,
        exp.onnx,
        torchscript_path=exp.torchscript,
        weights_path=exp.weights,
        input_example=exp.example,
        eval_metrics={"acc": acc},
        data_hash="d" * 64,
        config_hash="c" * 64,
        tracking_uri=uri,
        **kw,
    )


@pytest.mark.parametrize("bad", ["", "a/b", "x:y", "m@champion", "has space", "-lead", "a" * 129])
def test_illegal_names_refused_with_the_rule(bad: str, store_uri: str, exports) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        validate_model_name(bad)
    with pytest.raises(ValueError, match=r"registry model name .*: must be 1-128 characters"):
        register_model(bad, exports[0].onnx, tracking_uri=store_uri)


def test_register_tags_lineage_and_challenger(store_uri: str, exports) -> None:
    exp = exports[0]
    rv = _register(store_uri, "reg-lineage", exp, 0.9, flow_run_id="flow-123")
    assert rv.created and rv.version == "1"
    client = _client(store_uri)
    assert _alias(client, "reg-lineage", "challenger") == "1"
    tags = client.get_model_version("reg-lineage", "1").tags
    assert tags["trainflow.data_hash"] == "d" * 64
    assert tags["trainflow.config_hash"] == "c" * 64
    assert tags["trainflow.flow_run_id"] == "flow-123"
    assert tags["trainflow.export_verified"] == "true"
    assert float(tags["metric.acc"]) == 0.9
    assert tags["export.max_abs_diff"] == "1e-07"
    code = tags["trainflow.code_version"]
    assert len(code.split("+")[0]) == 40 or code.startswith("trainflow==")
    info = registry.lineage("reg-lineage", 1, tracking_uri=store_uri)
    assert info["lineage"]["content_hash"] == rv.content_hash and info["metrics"] == {"acc": 0.9}
    assert "challenger" in info["aliases"]
    # the logged model carries a signature and an input example
    from mlflow.models import get_model_info

    from trainer.loggers.mlflow_private import fluent

    with fluent(store_uri):
        minfo = get_model_info("models:/reg-lineage/1")
    assert minfo.signature is not None and minfo.saved_input_example_info is not None


def test_register_same_export_is_idempotent(store_uri: str, exports) -> None:
    first = _register(store_uri, "reg-idem", exports[1], 0.8)
    again = _register(store_uri, "reg-idem", exports[1], 0.8)
    other = _register(store_uri, "reg-idem", exports[2], 0.8)
    assert (first.created, again.created, other.created) == (True, False, True)
    assert again.version == first.version and other.version == "2"
    assert len(_client(store_uri).search_model_versions("name = 'reg-idem'")) == 2


def test_promotion_gate_both_ways(store_uri: str, exports) -> None:
    name = "reg-gate"
    v1 = _register(store_uri, name, exports[0], 0.80).version
    v2 = _register(store_uri, name, exports[1], 0.85).version
    v3 = _register(store_uri, name, exports[2], 0.95).version
    d1 = promote(name, v1, "acc", "max", 0.1, tracking_uri=store_uri)
    assert d1.promoted and d1.champion_version is None and "no champion" in d1.reason
    d2 = promote(name, v2, "acc", "max", 0.1, tracking_uri=store_uri)  # +0.05 < min_delta
    assert not d2.promoted and d2.champion_version == v1
    assert d2.candidate_value == 0.85 and d2.champion_value == 0.80 and "min_delta" in d2.reason
    client = _client(store_uri)
    assert _alias(client, name, "champion") == v1
    record = json.loads(client.get_model_version(name, v2).tags["trainflow.promotion_decision"])
    assert record["promoted"] is False and record["champion_version"] == v1
    d3 = promote(name, v3, "acc", "max", 0.1, tracking_uri=store_uri)  # +0.15 > min_delta
    assert d3.promoted and _alias(client, name, "champion") == v3
    assert client.get_model_version(name, v1).tags["trainflow.superseded_by"] == v3
    again = promote(name, v3, "acc", "max", 0.0, tracking_uri=store_uri)
    assert not again.promoted and "already the champion" in again.reason
    # a rerun's promote leaves the record of why v3 became champion as it was
    kept = json.loads(client.get_model_version(name, v3).tags["trainflow.promotion_decision"])
    assert kept["promoted"] is True and kept["champion_version"] == v1
    # "min" mode on the same numbers: lower is better, v1 (0.80) beats v3 (0.95)
    d4 = promote(name, v1, "acc", "min", 0.0, tracking_uri=store_uri)
    assert d4.promoted and d4.champion_value == 0.95


def test_gate_refuses_nan_missing_and_unverified(store_uri: str, exports) -> None:
    name = "reg-refuse"
    nan_v = _register(store_uri, name, exports[0], float("nan")).version
    d = promote(name, nan_v, "acc", tracking_uri=store_uri)
    assert not d.promoted and "not a finite number" in d.reason and math.isnan(d.candidate_value)
    d = promote(name, nan_v, "f1", tracking_uri=store_uri)
    assert not d.promoted and "no recorded metric 'f1'" in d.reason
    bad = _register(
        store_uri, name, exports[1], 0.99, export_metrics={"max_abs_diff": 0.5, "atol": 1e-5}
    ).version
    d = promote(name, bad, "acc", tracking_uri=store_uri)
    assert not d.promoted and "not verified" in d.reason
    assert registry.get_alias_version(name, tracking_uri=store_uri) is None
    with pytest.raises(ValueError, match="mode"):
        promote(name, bad, "acc", "higher", tracking_uri=store_uri)
    with pytest.raises(RegistryError, match="no version 99"):
        promote(name, 99, "acc", tracking_uri=store_uri)


def test_load_champion_matches_eager(store_uri: str, exports) -> None:
    name = "reg-load"
    exp = exports[3]
    with pytest.raises(RegistryError, match="no 'champion' alias"):
        load_champion(name, tracking_uri=store_uri)
    v = _register(store_uri, name, exp, 0.7).version
    assert promote(name, v, "acc", tracking_uri=store_uri).promoted
    sess = load_champion(name, tracking_uri=store_uri)
    x = torch.randn(5, 8)
    with torch.no_grad():
        eager = exp.module(x).numpy()
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-5)
    ts = load_champion_torchscript(name, tracking_uri=store_uri)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), exp.module(x), rtol=1e-6, atol=1e-6)


_RACE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import tasks.registry.promotion as promotion
    uri, name, version, go, hold = sys.argv[1:6]
    read_champion = promotion.alias_version

    def read_then_hold(*args, **kwargs):  # widens the window between reading and writing
        current = read_champion(*args, **kwargs)
        time.sleep(float(hold))
        return current

    promotion.alias_version = read_then_hold
    while not Path(go).exists():
        time.sleep(0.01)
    d = promotion.promote(name, version, "acc", "max", 0.0, tracking_uri=uri)
    print(json.dumps({"version": version, "promoted": d.promoted}))
    """
)


def test_two_processes_racing_leave_champion_on_the_better(
    store_uri: str, exports, tmp_path: Path
) -> None:
    name = "reg-race"
    better = _register(store_uri, name, exports[0], 0.90).version
    worse = _register(store_uri, name, exports[1], 0.80).version
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # both start together and hold 1.0 s (worse) / 0.2 s (better) between reading the champion
    # and writing the alias (each process patches its own read): without the lock both read
    # "no champion", the better one writes first and the worse one overwrites it (checked by
    # hand with the lock disabled)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, store_uri, name, v, str(go), hold],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v, hold in ((worse, "1.0"), (better, "0.2"))
    ]
    try:
        time.sleep(0.5)
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    champ = _alias(_client(store_uri), name, "champion")
    assert champ == better


def test_register_leaves_no_global_uri_behind(store_uri: str, exports, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering must not leave mlflow pointed at its CWD default (a stray ./mlflow.db)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    _register(store_uri, "no-leak", exports[3], 0.5)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert not (tmp_path / "mlflow.db").exists()
