"""The stage cache: Prefect result records that are data, and still true of the world.

Stage outputs are persisted by Prefect under ``<project>/.trainflow/results/<cache key>`` with
its JSON serializer. Before Prefect looks a key up, :func:`checked_cache_key` reads that record
itself and deletes it (so the stage runs again) when it is not plainly one of our pydantic stage
outputs or no longer describes the world:

* a record naming any other serializer (pickle, cloudpickle) or another decoder, or whose payload
  names any class but the stage's own output type, is refused without being decoded: a project
  folder is data, and decoding it must never import or run anything;
* a record whose files are gone or changed (content hashes), whose MLflow run or model version
  is missing from the store, or that was written against another store, is stale.

The store's identity (``trainer/loggers/mlflow_store.py::store_identity``: its URI and when its
first experiment was created, which differs for a new database at the same path) is part of
the keys of the stages that write to it.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tasks.types import DatasetRef, EvalReport, ExportRef, RegistryRef, TrainResult

log = logging.getLogger("trainflow.cache")

__all__ = ["checked_cache_key", "output_type", "record_problem"]

# The stages whose outputs point into the MLflow store.
_STORE_STAGES = (TrainResult, EvalReport, RegistryRef)


@cache
def _json_serializer() -> dict[str, Any]:
    from prefect.serializers import JSONSerializer

    return JSONSerializer().model_dump(mode="json")


def _no_class_markers(obj: Any) -> bool:
    """No nested ``__class__`` / ``__exc_type__`` objects: Prefect's decoder imports those."""
    if isinstance(obj, dict):
        if "__class__" in obj or "__exc_type__" in obj:
            return False
        return all(_no_class_markers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_no_class_markers(v) for v in obj)
    return True


def _decode(path: Path, expected: type[BaseModel]) -> BaseModel | str:
    """The record's value (validated as ``expected``), or why it is refused. Decodes nothing
    but JSON: the serializer named in the record is compared, never instantiated."""
    try:
        record = json.loads(path.read_text())
        serializer = record["metadata"]["serializer"]
        payload = json.loads(record["result"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"not a JSON result record ({type(err).__name__})"
    if serializer != _json_serializer():
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        return f"written with serializer {kind!r}, not plain JSON (refused, never decoded)"
    want = f"{expected.__module__}.{expected.__qualname__}"
    if not isinstance(payload, dict) or set(payload) != {"__class__", "data"} \
            or payload["__class__"] != want or not _no_class_markers(payload["data"]):
        return f"does not hold a plain {expected.__name__} (refused, never decoded)"
    try:
        return expected.model_validate(payload["data"])
    except ValidationError as err:
        return f"does not hold a valid {expected.__name__} ({err.error_count()} errors)"


def _file_problem(path: Path | None, sha256: str | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        return f"{path} is gone"
    if sha256 is not None:
        from tasks.prepare_data import file_sha256

        if file_sha256(path) != sha256:
            return f"{path} has changed"
    return None


def _missing(err: BaseException) -> bool:
    code = str(getattr(err, "error_code", ""))
    return "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code


def _store_problem(value: BaseModel, uri: str | None) -> str | None:
    """Whether the run / model version a value names is still in the store at ``uri``."""
    run_id = getattr(value, "mlflow_run_id", None)
    if not uri or not (run_id or isinstance(value, RegistryRef)):
        return None
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    try:
        if isinstance(value, RegistryRef):
            client.get_model_version(value.name, value.version)
        else:
            client.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        what = f"version {value.version} of {value.name!r}" if isinstance(value, RegistryRef) \
            else f"MLflow run {run_id}"
        return f"{what} is not in {uri}" if _missing(err) else f"{uri} cannot be read ({err})"
    return None


def _world_problem(value: BaseModel, uri: str | None) -> str | None:
    """What no longer holds of a cached stage output, or None."""
    if isinstance(value, DatasetRef):
        for split in value.splits.values():
            if not split.path.is_file():
                return f"{split.path} is gone"
        return None
    if isinstance(value, TrainResult):
        problem = _file_problem(value.checkpoint, value.checkpoint_sha256)
        return problem or _store_problem(value, uri)
    if isinstance(value, ExportRef):
        return _file_problem(value.onnx, value.onnx_sha256) or _file_problem(
            value.torchscript, value.torchscript_sha256
        )
    return _store_problem(value, uri)


def record_problem(path: Path, expected: type[BaseModel], uri: str | None) -> str | None:
    """Why the result record at ``path`` must not be served from cache, or None."""
    value = _decode(path, expected)
    if isinstance(value, str):
        return value
    return _world_problem(value, uri)


def output_type(task: Any) -> type[BaseModel] | None:
    """The pydantic model a stage task returns (its return annotation)."""
    hint = typing.get_type_hints(task.fn).get("return")
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def checked_cache_key(task: Any, results: Path, store: str | None) -> Callable[..., str | None]:
    """A ``cache_key_fn`` for ``task``: its own key (plus the store's identity for stages that
    write to the store), after deleting a record there that :func:`record_problem` refuses."""
    key_fn = task.cache_key_fn
    expected = output_type(task)

    def key(context: Any, params: dict[str, Any]) -> str | None:
        k = key_fn(context, params)
        if k is None or expected is None:
            return k
        if store and expected in _STORE_STAGES:
            import hashlib

            k = f"{k}-s{hashlib.sha256(store.encode()).hexdigest()[:12]}"
        path = results / k
        if path.exists():
            cfg = params.get("cfg")
            uri = getattr(getattr(cfg, "tracking", None), "uri", None)
            problem = record_problem(path, expected, uri)
            if problem is not None:
                log.warning("cached %s %s: %s; recomputing", task.name, path.name, problem)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return k

    return key
