"""The user's own code: ``module:Class`` paths from the config, found beside the config first.

A config file's folder goes to the front of ``sys.path`` when the config is loaded
(tasks/config.py), so ``model.class_path: my_models:Net`` finds ``my_models.py`` next to the
YAML without PYTHONPATH; DDP workers get the same ``sys.path`` (spawned processes start with
the parent's). The train
stage's cache key hashes the user source behind the classes it uses, the class's module and
the user modules it reaches (:func:`code_version`), so editing any of them retrains.
:func:`build_datamodule` makes the user's DataModule (``data.datamodule``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.types import DatasetRef, StageError

if TYPE_CHECKING:
    from tasks.config import TrainerConfig


def use_code_dir(folder: str | Path) -> None:
    """Put ``folder`` at the front of ``sys.path`` (once): modules there are found first."""
    folder = str(Path(folder).resolve())
    if sys.path[:1] != [folder]:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
        importlib.invalidate_caches()


def import_class(class_path: str, key: str = "model.class_path") -> type:
    """``pkg.mod:Class`` → the class; errors name the config key (``model.class_path``)."""
    mod_name, _, cls_name = class_path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise StageError(
            f"{key}: cannot import {mod_name!r} ({err}); put {mod_name.replace('.', '/')}.py "
            "beside the config file or on PYTHONPATH"
        ) from None
    cls = getattr(mod, cls_name, None)
    if not isinstance(cls, type):
        raise StageError(f"{key}: {mod_name!r} has no class {cls_name!r}")
    return cls


def code_version(class_path: str, key: str = "model.class_path") -> str:
    """A hash of the user's source behind a class: its module and every user module that
    module reaches (base classes, imported helpers, transitively), so editing any of them
    reruns the stages that use the class.

    "User module" means a file outside the Python installation, site-packages and trainflow's
    own framework packages (``trainer``, ``tasks``, ``flows``: a framework change is covered by
    each stage's CODE_VERSION). Shipped models under ``models/`` count as user code.
    The modules are found by reading their import statements, without importing anything: a
    model's module imports torch, and a cached run needs none.
    """
    files = _user_source_files(class_path.partition(":")[0])
    if not files:  # not a source file found on the path (a notebook, a C extension, or
        import_class(class_path, key)  # missing: this names it); the path is all we have
        return hashlib.sha256(class_path.encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_FRAMEWORK = ("trainer", "tasks", "flows")


def _spec(name: str) -> ModuleSpec | None:
    """Where ``name`` would be imported from, found without running any package's
    ``__init__`` (a submodule is looked up in its parent's folders, as the import system does
    once the parent is imported)."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__spec__", None)
    parent = name.rpartition(".")[0]
    try:
        if not parent:
            return importlib.util.find_spec(name)
        folders = getattr(_spec(parent), "submodule_search_locations", None)
        return PathFinder.find_spec(name, list(folders)) if folders else None
    except (ImportError, ValueError):
        return None


def _user_source_files(module_name: str) -> dict[str, Path]:
    """Module name → source file of ``module_name`` and every user module it imports,
    transitively (import statements anywhere in the file, read with ``ast``)."""
    not_user = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}

    def user_file(name: str) -> Path | None:
        if name.split(".")[0] in _FRAMEWORK or name in sys.builtin_module_names:
            return None
        if name.partition(".")[0] != name and user_file(name.partition(".")[0]) is None:
            return None  # inside an installed package: not looked up (no import of it)
        origin = getattr(_spec(name), "origin", None)
        if not origin or not origin.endswith(".py"):
            return None
        path = Path(origin).resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            return None
        if any(path.is_relative_to(root) for root in not_user):
            return None
        return path

    found: dict[str, Path] = {}
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = user_file(name)
        if path is None:
            continue
        found[name] = path
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue  # the hash covers the file; importing it reports the error
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 folders
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(p for p in [*parts, node.module or ""] if p)
                todo += [base, *(f"{base}.{a.name}" for a in node.names)]  # a submodule?
        todo += [name.rpartition(".")[0]] if "." in name else []  # parents run first
    return found


def constructor_signature(class_path: str) -> inspect.Signature | None:
    """The ``__init__`` signature of ``pkg.mod:Class``, read from source with ``ast`` (the
    class's own ``__init__``, else its bases' in order, followed through ``from m import B``),
    without importing the module (a model's module imports torch; a cached run needs none).
    Defaults that are not literals read as ``...``. None when the source does not say plainly
    (a decorated class, a base built at run time, no source file): import the class then."""
    mod_name, _, cls_name = class_path.partition(":")
    return _init_from_source(mod_name, cls_name, depth=0)


def _init_from_source(mod_name: str, cls_name: str, depth: int) -> inspect.Signature | None:
    origin = getattr(_spec(mod_name), "origin", None)
    if depth > 8 or not origin or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    imported = {a.asname or a.name: (n.module, a.name) for n in tree.body
                if isinstance(n, ast.ImportFrom) and n.module and not n.level for a in n.names}
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
    if cls is None or cls.decorator_list or cls.keywords:
        return None
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None)
    if init is not None:
        return None if init.decorator_list else _signature(init.args)
    if any(isinstance(t, ast.Name) and t.id == "__init__"
           for n in cls.body if isinstance(n, ast.Assign) for t in n.targets):
        return None  # __init__ = something: only Python knows
    for base in cls.bases:  # the first base that has an __init__ decides (single inheritance)
        if not isinstance(base, ast.Name):
            return None
        if base.id == "object":
            continue
        if base.id in imported:
            where, name = imported[base.id]
        elif any(isinstance(n, ast.ClassDef) and n.name == base.id for n in tree.body):
            where, name = mod_name, base.id
        else:
            return None
        return _init_from_source(where, name, depth + 1)
    return inspect.Signature()  # object.__init__: takes nothing


def _signature(args: ast.arguments) -> inspect.Signature | None:
    def default(node: ast.expr | None) -> Any:
        if node is None:
            return inspect.Parameter.empty
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return ...

    P = inspect.Parameter
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [P(a.arg, P.POSITIONAL_ONLY if a in args.posonlyargs else P.POSITIONAL_OR_KEYWORD,
                default=default(d)) for a, d in zip(positional, defaults, strict=True)]
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    params += [P(a.arg, P.KEYWORD_ONLY, default=default(d))
               for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    try:
        return inspect.Signature(params)
    except ValueError:  # e.g. a default before a parameter without one: let Python say
        return None


def build_datamodule(class_path: str, data: DatasetRef, trainer: TrainerConfig) -> Any:
    """The user's DataModule (``data.datamodule``), given what its ``__init__`` takes of: the
    prepared data (``data``, a DatasetRef), ``batch_size`` and ``seed``."""
    cls = import_class(class_path, "data.datamodule")
    offered = {"data": data, "batch_size": trainer.batch_size, "seed": trainer.seed}
    params = inspect.signature(cls.__init__).parameters
    try:
        return cls(**{k: v for k, v in offered.items() if k in params})
    except TypeError as err:
        raise StageError(f"data.datamodule: {cls.__name__}() failed: {err}") from None
