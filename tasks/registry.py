"""The model registry: register exports with their lineage, gate promotion, load the champion.

Plain functions (no Prefect decorators); ``tasks/register.py`` wraps them in tasks.

- :func:`register_model` logs the ONNX export as an MLflow logged model (signature and input
  example), with the TorchScript file and the weights as its extra files, and creates a
  registered model version tagged with its lineage (data hash, config hash, code version, flow
  run id, evaluation metrics, export-verification figures). The new version gets the alias
  ``challenger``. Registering the same export again (same content hash) returns the existing
  version. Given the dataset's ``schema.json`` (the pipeline always gives it), the logged model
  is a pyfunc instead (tasks/pyfunc_model.py, models from code: nothing pickled) holding the
  ONNX file, the schema, the TorchScript file and the weights as artifacts, with a signature of
  named columns: ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` answer like
  ``trainflow predict`` (tasks/inference.py).
- :func:`promote` moves ``champion`` to a version only if its recorded metric beats the current
  champion's by more than ``min_delta`` (or there is no champion), and records the decision as a
  version tag. Registry writes take an exclusive file lock (beside the SQLite store, or in the
  temp folder keyed by the URI for a server), so concurrent promotions on one host are
  serialised: the later one compares against the earlier one's result.
- :func:`load_champion` / :func:`load_champion_torchscript` give an onnxruntime session / the
  TorchScript module of ``models:/<name>@champion``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Offline hygiene (MLflow/onnxruntime telemetry off) is set by tasks/__init__ -> flows/__init__.

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PromotionDecision",
    "RegisteredVersion",
    "RegistryError",
    "code_version",
    "config_hash",
    "download_version",
    "export_content_hash",
    "file_hash",
    "flow_run_id",
    "get_alias_version",
    "lineage",
    "load_champion",
    "load_champion_torchscript",
    "promote",
    "register_model",
    "registry_lock",
    "validate_model_name",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "trainflow."
METRIC_TAG = "metric."
EXPORT_TAG = "export."
DECISION_TAG = "trainflow.promotion_decision"
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE_TEXT = (
    "1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(no '/', ':', '@' or spaces, so that models:/<name>@<alias> stays a valid URI)"
)
ONNX_FILE = "model.onnx"


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message names the thing and the fix."""


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


@dataclasses.dataclass(frozen=True)
class PromotionDecision:
    """The gate's decision; also stored as JSON in the candidate's ``trainflow.promotion_decision``
    tag."""

    name: str
    version: str
    alias: str
    metric: str
    mode: str
    min_delta: float
    promoted: bool
    reason: str
    candidate_value: float | None
    champion_version: str | None  # the champion before this decision
    champion_value: float | None
    decided_at: str

    def to_json(self) -> str:
        """The record as JSON (NaN written as null)."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return json.dumps({k: clean(v) for k, v in dataclasses.asdict(self).items()})


# --------------------------------------------------------------------------- lineage helpers


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a legal registry name, else raise ``ValueError`` with the rule."""
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise ValueError(f"registry model name {name!r}: must be {NAME_RULE_TEXT}")
    return name


def file_hash(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_hash(config: Any) -> str:
    """sha256 of a config's canonical JSON (mappings, dataclasses or pydantic models)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def export_content_hash(
    onnx_path: str | os.PathLike[str], torchscript_path: str | os.PathLike[str] | None = None
) -> str:
    """sha256 of the export: the ONNX model with its external weights, then the TorchScript file.

    The ONNX part hashes the loaded model proto, so it does not depend on whether the weights sit
    in the ``.onnx`` file or in a side ``.onnx.data`` file.
    """
    import onnx
    from onnx.external_data_helper import convert_model_from_external_data

    model = onnx.load(str(onnx_path))  # loads side-file weights into the tensors
    convert_model_from_external_data(model)  # and forgets where they came from
    try:
        from onnx.external_data_helper import _get_all_tensors

        tensors = list(_get_all_tensors(model))
    except ImportError:  # pragma: no cover - older/newer onnx
        tensors = list(model.graph.initializer)
    for tensor in tensors:  # an explicit DEFAULT location serialises differently from none
        if tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")
    h = hashlib.sha256(b"onnx\0")
    h.update(model.SerializeToString(deterministic=True))
    if torchscript_path is not None:
        h.update(b"\0torchscript\0")
        with open(torchscript_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the trainflow source (``+dirty`` with uncommitted tracked changes),
    else ``trainflow==<package version>``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if commit:
            return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"trainflow=={version('trainflow')}"
    except Exception:  # noqa: BLE001
        return "trainflow==unknown"


def flow_run_id() -> str | None:
    """The Prefect flow run id when called inside a flow run (Prefect is not imported here)."""
    if "prefect" in sys.modules:
        try:
            from prefect.runtime import flow_run

            fid = flow_run.id
            if fid:
                return str(fid)
        except Exception:  # noqa: BLE001
            pass
    return os.environ.get("PREFECT__FLOW_RUN_ID") or None


_default_code_version = code_version
_default_flow_run_id = flow_run_id


# --------------------------------------------------------------------------- store access


def _uri(tracking_uri: str | None) -> str:
    from trainer.loggers.mlflow_store import check_reachable

    return check_reachable(tracking_uri)


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _lock_path(uri: str) -> Path:
    from trainer.loggers.mlflow_store import sqlite_path

    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".registry.lock")
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"trainflow-registry-{key}.lock"


@contextlib.contextmanager
def registry_lock(uri: str, timeout: float = 120.0, name: str | None = None) -> Iterator[None]:
    """Exclusive lock for registry writes of model ``name`` on ``uri``, shared by every writer:
    a Prefect global concurrency limit with a Prefect server, else a file lock beside the SQLite
    store (tasks/promotion_lock.py)."""
    from tasks.promotion_lock import LockTimeout, hold
    from trainer.loggers.mlflow_store import sqlite_path

    try:  # LockTimeout comes only from taking the lock: the body raises RegistryError
        with hold(name, _lock_path(uri), sqlite_path(uri) is not None, timeout):
            yield
    except LockTimeout as err:
        raise RegistryError(str(err)) from None


def _is_missing(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "NOT_FOUND" in str(code)


def get_alias_version(name: str, alias: str = CHAMPION, tracking_uri: str | None = None) -> Any:
    """The ``ModelVersion`` behind ``models:/name@alias``, or None when the alias is not set."""
    validate_model_name(name)
    uri = _uri(tracking_uri)
    return _alias_version(_client(uri), name, alias)


def _alias_version(client: Any, name: str, alias: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # SQL store: INVALID_PARAMETER_VALUE "Registered model alias X not found."
        if _is_missing(exc) or f"alias {alias} not found" in str(exc).lower():
            return None
        raise


def lineage(name: str, version: str | int, tracking_uri: str | None = None) -> dict[str, Any]:
    """Where a version came from: its trainflow lineage tags, metrics, export figures, run id."""
    validate_model_name(name)
    client = _client(_uri(tracking_uri))
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
            k[len(METRIC_TAG) :]: _to_float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)
        },
        "export": {k[len(EXPORT_TAG) :]: v for k, v in tags.items() if k.startswith(EXPORT_TAG)},
    }


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- register


def _default_input_example(onnx_path: Path) -> Any:
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise RegistryError(
            f"{onnx_path}: {len(inputs)} graph inputs; pass input_example= (a numpy array for a "
            "single input or a dict name -> array)"
        )
    t = inputs[0].type.tensor_type
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
    return np.zeros(shape, dtype=dtype)


def _as_numpy(example: Any) -> Any:
    import numpy as np

    if hasattr(example, "detach"):
        return example.detach().cpu().numpy()
    if isinstance(example, Mapping):
        return {k: _as_numpy(v) for k, v in example.items()}
    return np.asarray(example)


def _verified(export_metrics: Mapping[str, Any] | None, explicit: bool | None) -> str:
    if explicit is not None:
        return "true" if explicit else "false"
    m = dict(export_metrics or {})
    for key in ("verified", "passed", "ok"):
        if isinstance(m.get(key), bool):
            return "true" if m[key] else "false"
    diff = _to_float(str(m.get("max_abs_diff"))) if "max_abs_diff" in m else None
    atol = _to_float(str(m.get("atol"))) if "atol" in m else None
    if diff is not None and atol is not None:
        return "true" if math.isfinite(diff) and diff <= atol else "false"
    return "unknown"


def _find_version_by_hash(client: Any, name: str, content_hash: str) -> Any:
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{TAG_PREFIX}content_hash` = '{content_hash}'"
    )
    found = sorted(found, key=lambda mv: int(mv.version))
    return found[0] if found else None


_FLUENT_LOCK = threading.RLock()


@contextlib.contextmanager
def _fluent(uri: str) -> Iterator[Any]:
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
    with _FLUENT_LOCK:
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
        name: registered model name (see :data:`NAME_RULE_TEXT`).
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
    uri = _uri(tracking_uri)
    client = _client(uri)
    digest = content_hash or export_content_hash(onnx_file, torchscript_path)
    if schema_path is not None:  # the same weights with another label mapping are another model
        digest = hashlib.sha256(f"{digest}\0".encode() + Path(schema_path).read_bytes()).hexdigest()
    lineage_tags = {
        f"{TAG_PREFIX}content_hash": digest,
        f"{TAG_PREFIX}data_hash": data_hash or "",
        f"{TAG_PREFIX}config_hash": config_hash or "",
        f"{TAG_PREFIX}code_version": code_version or _default_code_version(),
        f"{TAG_PREFIX}flow_run_id": flow_run_id or _default_flow_run_id() or "",
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
        existing = _find_version_by_hash(client, name, digest)
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
            with _fluent(uri) as mlflow, _installed_packages_known():
                rid, restore = _open_run(client, mlflow, run_id, experiment_name, name, uri)
                try:
                    with mlflow.start_run(run_id=rid, nested=mlflow.active_run() is not None):
                        info = _log_pyfunc(mlflow, onnx_file, Path(schema_path), extra, digest)
                        mlflow.set_tags({k: v for k, v in lineage_tags.items() if v})
                finally:
                    restore()
                mv = client.create_model_version(
                    name, source=info.model_uri, run_id=rid, tags=version_tags,
                    description=description, model_id=info.model_id,
                )
                _complete_registration(client, name, mv)
            return RegisteredVersion(
                name, str(mv.version), rid, f"models:/{name}/{mv.version}", digest, True,
                version_tags,
            )
        import onnx
        from mlflow.models import infer_signature

        example = (
            _as_numpy(input_example)
            if input_example is not None
            else (_default_input_example(onnx_file))
        )
        outputs = _run_onnx(onnx_file, example)
        signature = infer_signature(example, outputs)
        model = onnx.load(str(onnx_file))
        with _fluent(uri) as mlflow, _installed_packages_known():
            rid, restore = _open_run(client, mlflow, run_id, experiment_name, name, uri)
            try:
                with mlflow.start_run(run_id=rid, nested=mlflow.active_run() is not None):
                    info = mlflow.onnx.log_model(
                        model,
                        name="model",
                        signature=signature,
                        input_example=example,
                        pip_requirements=_pip_requirements(),
                        onnx_execution_providers=["CPUExecutionProvider"],
                        extra_files=extra or None,
                        metadata={"content_hash": digest},
                        save_as_external_data=False,
                    )
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


_COLUMN_TYPES = {"string": "string", "large_string": "string", "bool": "boolean"}


def column_signature(schema: Mapping[str, Any]) -> Any:
    """The MLflow signature of a model taking the schema's named columns (numbers as double,
    category columns as their source type) and answering ``prediction`` in the label's type;
    the ``probabilities`` parameter asks for one probability column per class."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [
        ColSpec(_COLUMN_TYPES.get(f["dtype"], "double") if f.get("categories") else "double",
                f["name"])
        for f in schema["features"]
    ]
    classes = schema.get("classes")
    if schema["task"] == "regression":
        out = "double"
    elif classes and all(isinstance(c, str) for c in classes):
        out = "string"
    else:
        out = "long"
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([ColSpec(out, "prediction")]),
        params=ParamSchema([ParamSpec("probabilities", "boolean", False)]),
    )


def _log_pyfunc(mlflow: Any, onnx_file: Path, schema_path: Path, extra: list[str],
                digest: str) -> Any:
    """Log the pyfunc model: ONNX (weights inside the one file) + schema.json + extra files."""
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
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts=artifacts,
                signature=column_signature(schema),
                pip_requirements=[*_pip_requirements(), _pinned("pandas")],
                metadata={"content_hash": digest},
            )


def _pinned(package: str) -> str:
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    return _get_pinned_requirement(package)


REGISTRATION_TAG = f"{TAG_PREFIX}registration"


def _complete_registration(client: Any, name: str, mv: Any) -> None:
    """The last steps of registering ``mv``: alias ``challenger``, then a "complete" tag. A
    version found without the tag was left by a killed registration: these steps finish it."""
    if (mv.tags or {}).get(REGISTRATION_TAG) == "complete":
        return
    if mv.run_id:
        _restore_run_status(client, mv.run_id)
    client.set_registered_model_alias(name, CHALLENGER, str(mv.version))
    client.set_model_version_tag(name, str(mv.version), REGISTRATION_TAG, "complete")


def _pip_requirements() -> list[str]:
    """The logged model's requirements, pinned to what is installed here (onnx, onnxruntime, numpy).

    Explicit requirements also spare MLflow's inference of them (seconds: it imports the model
    in a subprocess).
    """
    import mlflow.onnx
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    return [*mlflow.onnx.get_default_pip_requirements(), _get_pinned_requirement("numpy")]


@contextlib.contextmanager
def _installed_packages_known() -> Iterator[None]:
    """Spare ``log_model`` MLflow's scan of every installed distribution's file list.

    With explicit, pinned requirements, MLflow still checks each one against the environment,
    and the first check builds a module -> distribution map from the RECORD files of all
    installed packages (≈ 1 s here, torch's alone lists 10k+ files). Versions are looked up by
    distribution name (``importlib.metadata.version``) all the same; the map only serves as a
    fallback for distributions without metadata, which our pinned requirements are not. The map
    is left empty for the call and reset after it, so MLflow builds the real one if anything
    else in the process needs it (requirement inference). Called under ``_FLUENT_LOCK``.
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


def _run_onnx(onnx_file: Path, example: Any) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = example if isinstance(example, dict) else {names[0]: example}
    try:
        out = sess.run(None, feed)
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(
            f"{onnx_file}: onnxruntime could not run the input example ({exc}): pass an "
            "input_example= matching the model's inputs"
        ) from None
    return out[0] if len(out) == 1 else {o.name: v for o, v in zip(sess.get_outputs(), out)}


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        try:
            client.create_registered_model(name, tags={f"{TAG_PREFIX}created_by": "tasks.registry"})
        except MlflowException as exc2:
            if "ALREADY_EXISTS" not in str(getattr(exc2, "error_code", "")):
                raise


def _open_run(
    client: Any, mlflow: Any, run_id: str | None, experiment: str, name: str, uri: str
) -> tuple[str, Any]:
    """A run to log into, and a function that puts its status back afterwards."""
    from mlflow.exceptions import MlflowException

    from trainer.loggers.mlflow_store import get_or_create_experiment

    if run_id is None:
        eid = get_or_create_experiment(client, experiment, uri)
        run = client.create_run(eid, run_name=f"register-{name}")
        rid = run.info.run_id
        return rid, lambda: None
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


_STATUS_TAG = f"{TAG_PREFIX}status_before_register"


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


# --------------------------------------------------------------------------- promote


def _hold_for_tests() -> None:
    hold = os.environ.get("TRAINFLOW_PROMOTE_HOLD_S")  # widens the race window in tests
    if hold:
        time.sleep(float(hold))


def promote(
    name: str,
    version: str | int,
    metric: str,
    mode: str = "max",
    min_delta: float = 0.0,
    *,
    alias: str = CHAMPION,
    require_verified: bool = True,
    tracking_uri: str | None = None,
) -> PromotionDecision:
    """Move ``alias`` (champion) to ``version`` only if it beats the current champion.

    The values compared are the ``metric.<metric>`` tags recorded on each version at
    registration. ``mode="max"``: promoted iff ``candidate - champion > min_delta``;
    ``mode="min"``: iff ``champion - candidate > min_delta``. No champion (or a champion without a
    finite value): promoted. Never promoted: a candidate without a finite value, or whose export
    was not verified (``trainflow.export_verified`` false; also "unknown" when
    ``require_verified``). The decision is returned and written to the candidate's
    ``trainflow.promotion_decision`` tag. Runs under the registry lock, so two racing promotions
    leave the alias on the better version.
    """
    validate_model_name(name)
    if mode not in ("max", "min"):
        raise ValueError(f"promote.mode: must be 'max' or 'min' (got {mode!r})")
    if not (isinstance(min_delta, int | float) and math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"promote.min_delta: must be a finite number >= 0 (got {min_delta!r})")
    from mlflow.exceptions import MlflowException

    uri = _uri(tracking_uri)
    client = _client(uri)
    version = str(version)
    with registry_lock(uri, name=name):
        try:
            cand = client.get_model_version(name, version)
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(
                    f"promote: no version {version} of registered model {name!r} in {uri}"
                ) from None
            raise
        cand_value = _to_float(cand.tags.get(METRIC_TAG + metric))
        current = _alias_version(client, name, alias)
        _hold_for_tests()
        champ_version = str(current.version) if current is not None else None
        champ_value = (
            _to_float(current.tags.get(METRIC_TAG + metric)) if current is not None else None
        )
        verified = cand.tags.get(f"{TAG_PREFIX}export_verified", "unknown")
        promoted = False
        if cand_value is None:
            recorded = sorted(k[len(METRIC_TAG) :] for k in cand.tags if k.startswith(METRIC_TAG))
            reason = (
                f"version {version} has no recorded metric {metric!r} (recorded: {recorded}); "
                "register it with eval_metrics"
            )
        elif not math.isfinite(cand_value):
            reason = f"version {version}'s {metric} is {cand_value}, not a finite number"
        elif verified == "false" or (require_verified and verified != "true"):
            reason = (
                f"version {version}'s export is not verified (export_verified={verified}); "
                "verify the export against eager before promoting"
            )
        elif current is None:
            promoted, reason = True, f"no {alias} yet"
        elif champ_version == version:
            reason = f"version {version} is already the {alias}"
        elif champ_value is None or not math.isfinite(champ_value):
            promoted = True
            reason = f"{alias} version {champ_version} has no finite recorded {metric}"
        else:
            gain = cand_value - champ_value if mode == "max" else champ_value - cand_value
            better = "higher" if mode == "max" else "lower"
            if gain > min_delta:
                promoted = True
                reason = (
                    f"{metric} {cand_value:.6g} beats {alias} v{champ_version}'s "
                    f"{champ_value:.6g} by {gain:.6g} > min_delta {min_delta:g} "
                    f"({better} is better)"
                )
            else:
                reason = (
                    f"{metric} {cand_value:.6g} does not beat {alias} v{champ_version}'s "
                    f"{champ_value:.6g} by more than min_delta {min_delta:g} "
                    f"(gain {gain:.6g}, {better} is better)"
                )
        decision = PromotionDecision(
            name=name,
            version=version,
            alias=alias,
            metric=metric,
            mode=mode,
            min_delta=float(min_delta),
            promoted=promoted,
            reason=reason,
            candidate_value=cand_value,
            champion_version=champ_version,
            champion_value=champ_value,
            decided_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        if promoted:
            client.set_registered_model_alias(name, alias, version)
            if champ_version is not None:
                client.set_model_version_tag(
                    name, champ_version, f"{TAG_PREFIX}superseded_by", version
                )
        client.set_model_version_tag(name, version, DECISION_TAG, decision.to_json())
    return decision


# --------------------------------------------------------------------------- load


def download_version(
    name: str, alias: str, tracking_uri: str | None, dst: str
) -> tuple[Path, Any]:
    """Download ``models:/name@alias`` into ``dst``: (its local folder, the ModelVersion)."""
    validate_model_name(name)
    uri = _uri(tracking_uri)
    client = _client(uri)
    mv = _alias_version(client, name, alias)
    if mv is None:
        raise RegistryError(
            f"registered model {name!r} has no {alias!r} alias in {uri}: register and promote "
            "a version first"
        )
    import mlflow.artifacts

    with _fluent(uri):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}@{alias}", dst_path=dst, tracking_uri=uri
        )
    return Path(local), mv


def load_champion(
    name: str,
    *,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    providers: list[str] | None = None,
) -> Any:
    """An onnxruntime ``InferenceSession`` for ``models:/<name>@champion`` (CPU by default).

    The version it came from is in the session's ``trainflow_version`` attribute.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="trainflow-champion-") as tmp:
        local, mv = download_version(name, alias, tracking_uri, tmp)
        onnx_file = local / ONNX_FILE  # an ONNX-flavour version; a pyfunc one holds it here:
        if not onnx_file.is_file():
            onnx_file = local / "artifacts" / ONNX_FILE
        sess = ort.InferenceSession(
            str(onnx_file), providers=providers or ["CPUExecutionProvider"]
        )
    with contextlib.suppress(AttributeError):
        sess.trainflow_version = str(mv.version)
    return sess


def load_champion_torchscript(
    name: str,
    *,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    map_location: str = "cpu",
) -> Any:
    """The TorchScript module stored with ``models:/<name>@champion`` (``torch.jit.load``)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="trainflow-champion-") as tmp:
        local, mv = download_version(name, alias, tracking_uri, tmp)
        ts_name = mv.tags.get(f"{TAG_PREFIX}torchscript_file")
        if not ts_name:
            raise RegistryError(
                f"{name} version {mv.version} has no TorchScript file: register it with "
                "torchscript_path="
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ts_file = local / "extra_files" / ts_name
            if not ts_file.is_file():  # a pyfunc version keeps it among its artifacts
                ts_file = local / "artifacts" / ts_name
            return torch.jit.load(str(ts_file), map_location=map_location)
