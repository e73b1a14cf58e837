"""Reading the registry: the store behind a URI, a version by alias or by content, its lineage."""

from __future__ import annotations

from typing import Any

from tasks.registry.names import (
    CHAMPION,
    EXPORT_TAG,
    METRIC_TAG,
    TAG_PREFIX,
    to_float,
    validate_model_name,
)


def store_uri(tracking_uri: str | None) -> str:
    """The tracking URI to use (``None``: the project's default), checked to answer."""
    from trainer.loggers.mlflow_store import check_reachable

    return check_reachable(tracking_uri)


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` whose tracking and registry stores are both ``uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_missing(exc: BaseException) -> bool:
    """Whether an ``MlflowException`` says the thing asked for does not exist."""
    code = getattr(exc, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "NOT_FOUND" in str(code)


def alias_version(client: Any, name: str, alias: str) -> Any:
    """The ``ModelVersion`` behind ``name@alias`` through ``client``, or None when unset."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # SQL store: INVALID_PARAMETER_VALUE "Registered model alias X not found."
        if is_missing(exc) or f"alias {alias} not found" in str(exc).lower():
            return None
        raise


def get_alias_version(name: str, alias: str = CHAMPION, tracking_uri: str | None = None) -> Any:
    """The ``ModelVersion`` behind ``models:/name@alias``, or None when the alias is not set."""
    validate_model_name(name)
    return alias_version(client_for(store_uri(tracking_uri)), name, alias)


def find_version_by_hash(client: Any, name: str, content_hash: str) -> Any:
    """The oldest version of ``name`` registered from the export with ``content_hash``, or None."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{TAG_PREFIX}content_hash` = '{content_hash}'"
    )
    found = sorted(found, key=lambda mv: int(mv.version))
    return found[0] if found else None


def lineage(name: str, version: str | int, tracking_uri: str | None = None) -> dict[str, Any]:
    """Where a version came from: its trainflow lineage tags, metrics, export figures, run id."""
    validate_model_name(name)
    client = client_for(store_uri(tracking_uri))
    mv = client.get_model_version(name, str(version))
    tags = dict(mv.tags)
    return {
        "name": name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "aliases": sorted(
            a
            for a, v in (client.get_registered_model(name).aliases or {}).items()
            if str(v) == str(mv.version)
        ),
        "lineage": {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)},
        "metrics": {
            k[len(METRIC_TAG) :]: to_float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)
        },
        "export": {k[len(EXPORT_TAG) :]: v for k, v in tags.items() if k.startswith(EXPORT_TAG)},
    }
