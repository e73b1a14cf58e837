"""The MLflow internals trainflow reaches into (trainer/loggers/mlflow_private.py) are there in
the installed MLflow, which is the version they were checked against: this fails on an upgrade,
so the upgrade re-checks them instead of breaking a user's run."""

import importlib.metadata

import pytest

from trainer.loggers.mlflow_private import (
    PRIVATE_NAMES,
    TESTED_MLFLOW,
    MLflowChanged,
    private,
)


def test_installed_mlflow_is_the_checked_version():
    assert importlib.metadata.version("mlflow") == TESTED_MLFLOW


@pytest.mark.parametrize(("module", "name"), PRIVATE_NAMES)
def test_every_private_name_exists(module, name):
    private(module, name)


def test_a_missing_name_is_one_line_naming_it_and_the_versions():
    with pytest.raises(MLflowChanged) as err:
        private("mlflow.store.db.utils", "_gone_in_this_version")
    msg = str(err.value)
    assert "\n" not in msg
    assert "mlflow.store.db.utils._gone_in_this_version" in msg and TESTED_MLFLOW in msg
