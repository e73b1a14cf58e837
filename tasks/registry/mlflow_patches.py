"""Where we reach into MLflow beyond its client: its process-global URIs and its requirement
scan. Every such reach is here, so an MLflow upgrade has one module to check.

- :func:`fluent`: MLflow's fluent API (``log_model`` has no client form) pointed at a URI for a
  block, with the globals put back exactly as they were.
- :func:`installed_packages_known`: spares ``log_model`` a scan of every installed package.
- :func:`pip_requirements` / :func:`pinned`: a logged model's requirements, pinned to what is
  installed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

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
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

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
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    return _get_pinned_requirement(package)


def pip_requirements() -> list[str]:
    """The logged model's requirements, pinned to what is installed here (onnx, onnxruntime, numpy).

    Explicit requirements also spare MLflow's inference of them (seconds: it imports the model
    in a subprocess).
    """
    import mlflow.onnx

    return [*mlflow.onnx.get_default_pip_requirements(), pinned("numpy")]
