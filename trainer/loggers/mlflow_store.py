"""The MLflow store the trainer logs to: the embedded default, URI resolution, a fail-fast
reachability check, experiment creation and the store's identity.

The embedded default needs no server: ``sqlite:///<abs project>/.trainflow/mlflow.db`` with the
artifacts beside it in ``.trainflow/mlartifacts``. Resolution order: an explicit URI (argument or
config), then ``MLFLOW_TRACKING_URI``, then the embedded default. The project folder is
``TRAINFLOW_PROJECT_DIR`` when set, else the current working directory.

It lives under ``trainer/loggers/`` because ``MLflowLogger`` needs it and the trainer core imports
nothing from ``tasks/`` or ``flows/`` (layers point one way). mlflow is imported inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

STATE_DIR = ".trainflow"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking URI cannot be used; the message says which URI and what to do."""


def project_dir() -> Path:
    """The project folder holding ``.trainflow/``: ``$TRAINFLOW_PROJECT_DIR`` or the CWD."""
    return Path(os.environ.get("TRAINFLOW_PROJECT_DIR") or os.getcwd()).resolve()


def default_tracking_uri(project: str | os.PathLike[str] | None = None) -> str:
    """The embedded store: ``sqlite:///<abs project>/.trainflow/mlflow.db``."""
    root = Path(project).resolve() if project is not None else project_dir()
    return "sqlite:///" + str(root / STATE_DIR / DB_NAME)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for other schemes."""
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://") :]
    if not rest.startswith("/"):
        raise TrackingUnreachable(
            f"tracking URI {uri!r}: a SQLite URI must be sqlite:///relative.db or "
            "sqlite:////absolute/path.db"
        )
    path = rest[1:].split("?", 1)[0]
    return Path(path).resolve() if path else None


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Pick the tracking URI (argument, ``$MLFLOW_TRACKING_URI``, embedded default) and normalise.

    Relative SQLite paths become absolute (so artifacts never land in a random CWD); a bare
    folder path (MLflow's deprecated file store) is refused with the fix.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    chosen = chosen.strip()
    db = sqlite_path(chosen)
    if db is not None:
        return "sqlite:///" + str(db)
    scheme = urllib.parse.urlparse(chosen).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise TrackingUnreachable(
            f"tracking URI {chosen!r}: MLflow's file store is not supported; use "
            f"sqlite:///{Path(chosen.removeprefix('file://')).resolve() / DB_NAME} or an "
            "http(s):// tracking server"
        )
    return chosen


def artifact_root_for(uri: str) -> str | None:
    """Where artifacts of new experiments go for ``uri``: beside the SQLite file, else the
    server's choice (None)."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIR).as_uri()


def _safe_dirname(name: str) -> str:
    keep = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name)
    return keep.strip(".") or "experiment"


def get_or_create_experiment(client: object, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with its artifact location beside a SQLite store)
    when missing; safe when two processes create it at once."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)  # type: ignore[attr-defined]
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingUnreachable(
                f"MLflow experiment {name!r} is deleted in {uri}: restore it "
                "(`mlflow experiments restore`) or choose another experiment name"
            )
        return exp.experiment_id
    root = artifact_root_for(uri)
    location = f"{root}/{_safe_dirname(name)}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)  # type: ignore[attr-defined]
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # type: ignore[attr-defined]
        if exp is None:
            raise
        return exp.experiment_id


def http_health(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            if resp.status != 200:
                raise TrackingUnreachable(
                    f"MLflow tracking server {uri} answered HTTP {resp.status} on /health: "
                    "check the URI or the server"
                )
    except urllib.error.HTTPError as exc:
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} answered HTTP {exc.code} on /health: check the URI "
            "(a server bound elsewhere answers 403 to a foreign Host header)"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} is unreachable ({reason}): start it "
            "(`mlflow server --host 127.0.0.1`), fix MLFLOW_TRACKING_URI / config.tracking_uri, "
            "or unset it to use the embedded store"
        ) from None


_SEEN_FILES: dict[Path, tuple[int, int]] = {}


def _forget_replaced_store(uri: str, db: Path) -> None:
    """Drop MLflow's cached database engines for ``uri`` when its file was replaced (moved away,
    a new store created) since this process last opened it: their pooled connections still point
    at the old file, and writes through them fail ("readonly database")."""
    try:
        st = db.stat()
    except OSError:
        return
    ident = (st.st_dev, st.st_ino)
    if _SEEN_FILES.setdefault(db, ident) == ident:
        return
    _SEEN_FILES[db] = ident
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    for store in (TrackingStore, RegistryStore):
        engines = getattr(store, "_engine_map", {})
        for key in [k for k in engines if k == uri]:
            with contextlib.suppress(Exception):
                engines.pop(key).dispose()


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, before training, when the tracking store cannot be used.

    SQLite: the folder is created and must be writable; a new store is a copy of the migrated
    empty template (:func:`store_template`), an existing one is opened (MLflow migrates it).
    HTTP(S): ``GET /health`` within ``timeout`` seconds (MLflow's own client would retry for
    minutes). Returns the resolved URI; raises :class:`TrackingUnreachable` with a one-line message.
    """
    resolved = resolve_tracking_uri(uri)
    db = sqlite_path(resolved)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnreachable(
                f"tracking URI {resolved}: cannot create folder {db.parent} ({exc.strerror}): "
                "choose a writable location"
            ) from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnreachable(
                f"tracking URI {resolved}: {db} is not writable: choose a writable location"
            )
        if not db.exists():
            seed_sqlite_store(db)
        _forget_replaced_store(resolved, db)
        try:
            from mlflow import MlflowClient

            MlflowClient(resolved, resolved).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - one clear line instead of a DB traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingUnreachable(
                f"tracking URI {resolved}: cannot open the MLflow store ({first}): delete or "
                "move the file if it is not an MLflow database"
            ) from None
        return resolved
    scheme = urllib.parse.urlparse(resolved).scheme
    if scheme in ("http", "https"):
        http_health(resolved, timeout)
        return resolved
    try:  # databases and other stores: one real call
        from mlflow import MlflowClient

        MlflowClient(resolved, resolved).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingUnreachable(f"tracking URI {resolved} is unusable: {first}") from None
    return resolved


def run_exists(uri: str | None, run_id: str) -> bool:
    """Whether MLflow run ``run_id`` is in the store at ``uri`` (False when it was deleted or the
    store is another one; errors other than "no such run" are raised)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    resolved = resolve_tracking_uri(uri)
    try:
        MlflowClient(resolved, resolved).get_run(run_id)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")):
            return False
        raise
    return True


def store_identity(uri: str | None) -> str:
    """``<uri>#<creation time of the store's Default experiment>``: a new database at the same
    URI (the old one moved away) has another identity. Opens (or creates) the store first, so an
    unusable one fails here with :class:`TrackingUnreachable`, before any stage runs."""
    resolved = check_reachable(uri)
    from mlflow import MlflowClient

    try:
        return f"{resolved}#{MlflowClient(resolved, resolved).get_experiment('0').creation_time}"
    except Exception:  # noqa: BLE001 - no Default experiment (a server's choice): the URI alone
        return resolved


# --------------------------------------------------------------------------- new SQLite stores


def cache_dir() -> Path:
    """trainflow's per-user cache: ``$TRAINFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/trainflow``,
    else ``~/.cache/trainflow``."""
    env = os.environ.get("TRAINFLOW_CACHE_DIR")
    if env:
        return Path(env).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).resolve() / "trainflow"


def _schema_key() -> str | None:
    """The installed MLflow's version and a hash of its migration file names (no import of
    mlflow): a store template is only reused by the MLflow that made it."""
    import importlib.metadata
    import importlib.util

    try:
        spec = importlib.util.find_spec("mlflow")
        if spec is None or spec.origin is None:
            return None
        versions = Path(spec.origin).parent / "store" / "db_migrations" / "versions"
        names = sorted(n for n in os.listdir(versions) if n.endswith(".py"))
        version = importlib.metadata.version("mlflow")
    except (OSError, ImportError, ValueError):
        return None
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    return f"{_safe_dirname(version)}-{digest}"


def store_template() -> Path | None:
    """An empty SQLite store with MLflow's current schema, made once per MLflow version.

    MLflow creates a new SQLite store by running all its schema migrations (≈ 70 alembic
    scripts, ≈ 3 s on a 2-core machine); every later new store is a copy of this file. The
    template is made by MLflow's own table initialisation (its first experiment is created, as
    always, when the store is first opened). Returns None when it cannot be made (unwritable
    cache, MLflow internals changed): the caller then lets MLflow create the store itself.
    Set ``TRAINFLOW_STORE_TEMPLATE=0`` to never use it.
    """
    if os.environ.get("TRAINFLOW_STORE_TEMPLATE", "1").strip().lower() in ("0", "false", "no"):
        return None
    key = _schema_key()
    if key is None:
        return None
    template = cache_dir() / f"mlflow-store-{key}.db"
    if template.is_file():
        return template
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        from trainer.loggers.mlflow_private import initialize_tables

        initialize_tables(str(tmp))
        os.replace(tmp, template)  # whole or not at all; a racing maker writes the same bytes
    except Exception:  # noqa: BLE001 - an optimisation only: MLflow creates the store itself
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return template


def seed_sqlite_store(db: Path) -> bool:
    """Create the SQLite store ``db`` as a copy of :func:`store_template` (instead of MLflow's
    migrations); returns whether it did. Never replaces a file: when another process created
    ``db`` meanwhile, that store stays."""
    template = store_template()
    if template is None or db.exists():
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.seed")
    try:
        shutil.copyfile(template, tmp)
        os.link(tmp, db)  # atomic, and fails if db exists
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
