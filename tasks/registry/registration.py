"""Registering an export: log it as an MLflow model and make it a version tagged with its lineage.

The version's tags say where it came from (data hash, config hash, code version, flow run id),
how good it is (``metric.<name>``, read by the promotion gate) and whether its export matched
eager (``export.<name>``, ``trainflow.export_verified``). A new version gets the alias
``challenger``; registering the same export again (same content hash) returns the existing one.
Given the dataset's ``schema.json`` the logged model is a pyfunc (tasks/pyfunc_model.py, models
from code: nothing pickled) answering named columns like ``trainflow predict``; without it, an
ONNX model taking the input tensor.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tasks.registry import provenance
from tasks.registry.hashing import export_content_hash
from tasks.registry.lock import registry_lock
from tasks.registry.names import (
    CHALLENGER,
    EXPORT_TAG,
    METRIC_TAG,
    ONNX_FILE,
    REGISTRATION_TAG,
    TAG_PREFIX,
    RegistryError,
    to_float,
    validate_model_name,
)
from tasks.registry.signature import column_signature, tensor_signature
from tasks.registry.versions import client_for, find_version_by_hash, is_missing, store_uri
from trainer.loggers.mlflow_private import (
    fluent,
    installed_packages_known,
    pinned,
    pip_requirements,
)

PYFUNC_MODEL = Path(__file__).resolve().parents[1] / "pyfunc_model.py"  # tasks/pyfunc_model.py
_STATUS_TAG = f"{TAG_PREFIX}status_before_register"


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version (what :func:`register_model` returns)."""

    name: str
    version: str
    run_id: str | None
    model_uri: str  # models:/<name>/<version>
    content_hash: str
    created: bool  # False: the same export was registered before, this is that version
    tags: dict[str, str]


def register_model(
    name: str,
    onnx_path: str | os.PathLike[str],
    *,
    torchscript_path: str | os.PathLike[str] | None = None,
    weights_path: str | os.PathLike[str] | None = None,
    schema_path: str | os.PathLike[str] | None = None,
    input_example: Any = None,
    eval_metrics: Mapping[str, float] | None = None,
    export_metrics: Mapping[str, Any] | None = None,
    export_verified: bool | None = None,
    data_hash: str | None = None,
    config_hash: str | None = None,
    code_version: str | None = None,
    flow_run_id: str | None = None,
    content_hash: str | None = None,
    run_id: str | None = None,
    experiment_name: str = "trainflow-registry",
    tracking_uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> RegisteredVersion:
    """Log an export and register it as a new version of ``name`` with its lineage.

    Args:
        name: registered model name (see :data:`~tasks.registry.names.NAME_RULE_TEXT`).
        onnx_path: the ONNX export (a side ``.onnx.data`` file is picked up by onnx.load).
        torchscript_path, weights_path: TorchScript file and weights (state dict / checkpoint),
            stored as extra files of the logged model.
        schema_path: the dataset's schema.json (tasks/schema.py). With it the version is logged
            as a pyfunc model (tasks/pyfunc_model.py, models from code) holding the ONNX file and
            the schema, with a signature of named columns: ``mlflow.pyfunc.load_model`` and
            ``mlflow models serve`` then answer like ``trainflow predict``. Without it, as an
            ONNX model whose signature is the input tensor.
        input_example: model input (numpy array or tensor); default zeros of the ONNX input
            shape with dynamic dims set to 1. The signature is inferred from it and the ONNX
            outputs.
        eval_metrics: evaluation metrics, stored as ``metric.<name>`` version tags (the gate
            reads them).
        export_metrics: export-verification figures (e.g. ``max_abs_diff``, ``atol``,
            ``verified``), stored as ``export.<name>`` tags.
        export_verified: overrides the verdict derived from ``export_metrics``.
        data_hash, config_hash: lineage; ``code_version`` and ``flow_run_id`` default to the git
            commit (or package version) and the current Prefect flow run.
        content_hash: identity of the export; default :func:`export_content_hash`.
        run_id: log into this MLflow run (e.g. the training run); default a new run in
            ``experiment_name``. The run's status is left as it was.

    Returns:
        The new version (``created=True``, alias ``challenger``) or, for an export already
        registered under ``name`` with the same content hash, that version (``created=False``).
    """
    validate_model_name(name)
    onnx_file = Path(onnx_path)
    if not onnx_file.is_file():
        raise RegistryError(
            f"register_model.onnx_path: no file {onnx_file}: export the model first"
        )
    extra: list[str] = []
    for label, p in (("torchscript_path", torchscript_path), ("weights_path", weights_path)):
        if p is not None:
            if not Path(p).is_file():
                raise RegistryError(f"register_model.{label}: no file {p}")
            extra.append(str(Path(p).resolve()))
    if len({Path(p).name for p in extra}) != len(extra):
        raise RegistryError(
            f"register_model: torchscript_path and weights_path have the same file name "
            f"({Path(extra[0]).name}); rename one"
        )
    uri = store_uri(tracking_uri)
    client = client_for(uri)
    digest = content_hash or export_content_hash(onnx_file, torchscript_path)
    if schema_path is not None:  # the same weights with another label mapping are another model
        digest = hashlib.sha256(f"{digest}\0".encode() + Path(schema_path).read_bytes()).hexdigest()
    lineage_tags = {
        f"{TAG_PREFIX}content_hash": digest,
        f"{TAG_PREFIX}data_hash": data_hash or "",
        f"{TAG_PREFIX}config_hash": config_hash or "",
        f"{TAG_PREFIX}code_version": code_version or provenance.code_version(),
        f"{TAG_PREFIX}flow_run_id": flow_run_id or provenance.flow_run_id() or "",
        f"{TAG_PREFIX}export_verified": _verified(export_metrics, export_verified),
        f"{TAG_PREFIX}registered_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if torchscript_path is not None:
        lineage_tags[f"{TAG_PREFIX}torchscript_file"] = Path(torchscript_path).name
    if weights_path is not None:
        lineage_tags[f"{TAG_PREFIX}weights_file"] = Path(weights_path).name
    metric_tags = {f"{METRIC_TAG}{k}": repr(float(v)) for k, v in (eval_metrics or {}).items()}
    export_tags = {f"{EXPORT_TAG}{k}": str(v) for k, v in (export_metrics or {}).items()}
    user_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    version_tags = {**user_tags, **metric_tags, **export_tags, **lineage_tags}

    with registry_lock(uri, name=name):
        _ensure_registered_model(client, name)
        existing = find_version_by_hash(client, name, digest)
        if existing is not None:
            _complete_registration(client, name, existing)  # a killed registration's last steps
            return RegisteredVersion(
                name,
                str(existing.version),
                existing.run_id,
                f"models:/{name}/{existing.version}",
                digest,
                False,
                dict(existing.tags),
            )
        if schema_path is not None:
            log = _pyfunc_logger(onnx_file, Path(schema_path), extra, digest)
        else:
            log = _onnx_logger(onnx_file, input_example, extra, digest)
        with fluent(uri) as mlflow, installed_packages_known():
            rid, restore = _open_run(client, run_id, experiment_name, name, uri)
            try:
                with mlflow.start_run(run_id=rid, nested=mlflow.active_run() is not None):
                    info = log(mlflow)
                    mlflow.set_tags({k: v for k, v in lineage_tags.items() if v})
            finally:
                restore()
            # inside the fluent context: the registry store resolves the logged model through
            # the global tracking URI
            mv = client.create_model_version(
                name,
                source=info.model_uri,
                run_id=rid,
                tags=version_tags,
                description=description,
                model_id=info.model_id,
            )
            _complete_registration(client, name, mv)
    return RegisteredVersion(
        name, str(mv.version), rid, f"models:/{name}/{mv.version}", digest, True, version_tags
    )


def _verified(export_metrics: Mapping[str, Any] | None, explicit: bool | None) -> str:
    """The ``export_verified`` tag: the explicit verdict, else one read from the figures."""
    if explicit is not None:
        return "true" if explicit else "false"
    m = dict(export_metrics or {})
    for key in ("verified", "passed", "ok"):
        if isinstance(m.get(key), bool):
            return "true" if m[key] else "false"
    diff = to_float(str(m.get("max_abs_diff"))) if "max_abs_diff" in m else None
    atol = to_float(str(m.get("atol"))) if "atol" in m else None
    if diff is not None and atol is not None:
        return "true" if math.isfinite(diff) and diff <= atol else "false"
    return "unknown"


# --------------------------------------------------------------------------- the logged model


def _onnx_logger(
    onnx_file: Path, input_example: Any, extra: list[str], digest: str
) -> Callable[[Any], Any]:
    """Logs the ONNX model with a tensor signature (inferred here, before the fluent block)."""
    import onnx

    signature, example = tensor_signature(onnx_file, input_example)
    model = onnx.load(str(onnx_file))

    def log(mlflow: Any) -> Any:
        return mlflow.onnx.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            onnx_execution_providers=["CPUExecutionProvider"],
            extra_files=extra or None,
            metadata={"content_hash": digest},
            save_as_external_data=False,
        )

    return log


def _pyfunc_logger(
    onnx_file: Path, schema_path: Path, extra: list[str], digest: str
) -> Callable[[Any], Any]:
    """Logs the pyfunc model: ONNX (weights inside the one file) + schema.json + extra files."""

    def log(mlflow: Any) -> Any:
        import onnx

        from tasks.schema import SCHEMA_FILE, read_schema

        schema = read_schema(schema_path)
        with tempfile.TemporaryDirectory(prefix="trainflow-register-") as tmp:
            onnx_copy = Path(tmp) / ONNX_FILE
            onnx.save(onnx.load(str(onnx_file)), str(onnx_copy))  # side-file weights folded in
            schema_copy = Path(tmp) / SCHEMA_FILE
            schema_copy.write_bytes(schema_path.read_bytes())
            artifacts = {"onnx": str(onnx_copy), "schema": str(schema_copy)}
            for p in extra:
                artifacts[Path(p).name] = p
            with warnings.catch_warnings():
                # the signature is explicit (named columns): MLflow's hint about an example is moot
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_MODEL),
                    artifacts=artifacts,
                    signature=column_signature(schema),
                    pip_requirements=[*pip_requirements(), pinned("pandas")],
                    metadata={"content_hash": digest},
                )

    return log


# --------------------------------------------------------------------------- store steps


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        try:
            client.create_registered_model(name, tags={f"{TAG_PREFIX}created_by": "tasks.registry"})
        except MlflowException as exc2:
            if "ALREADY_EXISTS" not in str(getattr(exc2, "error_code", "")):
                raise


def _complete_registration(client: Any, name: str, mv: Any) -> None:
    """The last steps of registering ``mv``: alias ``challenger``, then a "complete" tag. A
    version found without the tag was left by a killed registration: these steps finish it."""
    if (mv.tags or {}).get(REGISTRATION_TAG) == "complete":
        return
    if mv.run_id:
        _restore_run_status(client, mv.run_id)
    client.set_registered_model_alias(name, CHALLENGER, str(mv.version))
    client.set_model_version_tag(name, str(mv.version), REGISTRATION_TAG, "complete")


def _open_run(
    client: Any, run_id: str | None, experiment: str, name: str, uri: str
) -> tuple[str, Callable[[], None]]:
    """A run to log into, and a function that puts its status back afterwards."""
    from mlflow.exceptions import MlflowException

    from trainer.loggers.mlflow_store import get_or_create_experiment

    if run_id is None:
        eid = get_or_create_experiment(client, experiment, uri)
        run = client.create_run(eid, run_name=f"register-{name}")
        return run.info.run_id, lambda: None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"register_model.run_id: no run {run_id!r} in {uri}") from None
    info = run.info
    # Logging reopens the run (RUNNING); its status before is kept in a tag until restored, so
    # a registration killed meanwhile does not leave the run RUNNING for good: the next one
    # restores the status recorded by the killed one.
    status = run.data.tags.get(_STATUS_TAG) or info.status
    client.set_tag(run_id, _STATUS_TAG, status)
    return run_id, lambda: _restore_run_status(client, run_id, info.end_time)


def _restore_run_status(client: Any, run_id: str, end_time: int | None = None) -> None:
    """Put back the status recorded in the run's ``status_before_register`` tag, if any."""
    status = client.get_run(run_id).data.tags.get(_STATUS_TAG)
    if status is None:
        return
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status, end_time=end_time)
    client.delete_tag(run_id, _STATUS_TAG)
