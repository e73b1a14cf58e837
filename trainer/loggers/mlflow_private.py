"""Every reach into MLflow beyond its public API, in one module, so an upgrade has one place to
check: its process-global URIs, its requirement scan and pinning, and its store initialisation.

Each private name is looked up through :func:`private`, which turns a missing one into one line
naming it and the MLflow version it was written against (:data:`TESTED_MLFLOW`);
``tests/mlflow/test_mlflow_private.py`` fails as soon as the installed MLflow is another version
or one of :data:`PRIVATE_NAMES` is gone, so an upgrade is a decision, not a surprise.

- :func:`fluent`: MLflow's fluent API (``log_model`` has no client form) pointed at a URI for a
  block, with the globals put back exactly as they were.
- :func:`installed_packages_known`: spares ``log_model`` a scan of every installed package.
- :func:`pip_requirements` / :func:`pinned`: a logged model's requirements, pinned to what is
  installed.
- :func:`initialize_tables`: MLflow's own schema set-up of a new SQLite store (the store template,
  trainer/loggers/mlflow_store.py).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from typing import Any

TESTED_MLFLOW = "3.17.2"  # constraints.txt's pin: the version these reaches were checked against

# (module, attribute) of every private name used here
PRIVATE_NAMES = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
    ("mlflow.utils.requirements_utils", "_MODULES_TO_PACKAGES"),
    ("mlflow.utils.requirements_utils", "_PACKAGES_TO_MODULES"),
    ("mlflow.utils.requirements_utils", "_get_pinned_requirement"),
    ("mlflow.store.db.utils", "_initialize_tables"),
)


class MLflowChanged(RuntimeError):
    """A private MLflow name this module relies on is gone (another MLflow version)."""


def private(module: str, name: str) -> Any:
    """``module.name`` from MLflow's internals, or one line saying it is gone and why it matters."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        import mlflow

        raise MLflowChanged(
            f"MLflow {mlflow.__version__} has no {module}.{name} (trainflow was checked against "
            f"mlflow {TESTED_MLFLOW}): install mlflow=={TESTED_MLFLOW} (constraints.txt)"
        ) from None


FLUENT_LOCK = threading.RLock()  # the fluent API's state is process-global: one user at a time


@contextlib.contextmanager
def fluent(uri: str) -> Iterator[Any]:
    """mlflow's fluent API pointed at ``uri`` (process-global state: one thread at a time).

    On exit the URIs and their environment variables are put back exactly as they were: reading
    them back with ``mlflow.get_tracking_uri()`` would give mlflow's default (``sqlite:///mlflow.db``
    in the current folder) and setting that would export it to ``MLFLOW_TRACKING_URI``, so later
    calls would silently write a stray store there. mlflow's own ``_use_tracking_uri`` saves the
    module attribute the same way.
    """
    import mlflow

    tracking_utils = importlib.import_module("mlflow.tracking._tracking_service.utils")
    registry_utils = importlib.import_module("mlflow.tracking._model_registry.utils")
    private(tracking_utils.__name__, "_tracking_uri")
    private(registry_utils.__name__, "_registry_uri")

    env_names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with FLUENT_LOCK:
        old_env = {k: os.environ.get(k) for k in env_names}
        old_t, old_r = tracking_utils._tracking_uri, registry_utils._registry_uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield mlflow
        finally:
            mlflow.set_tracking_uri(old_t)
            mlflow.set_registry_uri(old_r)
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def installed_packages_known() -> Iterator[None]:
    """Spare ``log_model`` MLflow's scan of every installed distribution's file list.

    With explicit, pinned requirements, MLflow still checks each one against the environment,
    and the first check builds a module -> distribution map from the RECORD files of all
    installed packages (≈ 1 s here, torch's alone lists 10k+ files). Versions are looked up by
    distribution name (``importlib.metadata.version``) all the same; the map only serves as a
    fallback for distributions without metadata, which our pinned requirements are not. The map
    is left empty for the call and reset after it, so MLflow builds the real one if anything
    else in the process needs it (requirement inference). Called under :data:`FLUENT_LOCK`.
    """
    try:
        from mlflow.utils import requirements_utils as ru
    except ImportError:  # pragma: no cover - MLflow moved it: the check just runs
        yield
        return
    if getattr(ru, "_MODULES_TO_PACKAGES", "missing") is not None:
        yield  # already built (or MLflow changed): nothing to spare
        return
    ru._MODULES_TO_PACKAGES = {}
    try:
        yield
    finally:
        ru._MODULES_TO_PACKAGES = None
        ru._PACKAGES_TO_MODULES = None


def pinned(package: str) -> str:
    """``package==<installed version>`` as MLflow writes it in a model's requirements."""
    return private("mlflow.utils.requirements_utils", "_get_pinned_requirement")(package)


def pip_requirements() -> list[str]:
    """The logged model's requirements, pinned to what is installed here (onnx, onnxruntime, numpy).

    Explicit requirements also spare MLflow's inference of them (seconds: it imports the model
    in a subprocess).
    """
    import mlflow.onnx

    return [*mlflow.onnx.get_default_pip_requirements(), pinned("numpy")]


def initialize_tables(sqlite_file: str) -> None:
    """Create MLflow's current schema in a new SQLite file, as MLflow does for a new store."""
    from mlflow.store.db.utils import create_sqlalchemy_engine

    engine = create_sqlalchemy_engine("sqlite:///" + sqlite_file)
    try:
        private("mlflow.store.db.utils", "_initialize_tables")(engine)
    finally:
        engine.dispose()
