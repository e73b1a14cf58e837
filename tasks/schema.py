"""The dataset schema: what a model's input columns and output classes are, in the user's terms.

prepare_data writes ``schema.json`` beside ``stats.json``; register stores it on the registered
model version; predict and the served model read it to map named columns (in any order) and
category strings to the model's input matrix, and class codes back to the user's labels::

    {"task": "classification" | "regression",
     "label": "diagnosis", "label_dtype": "string",
     "classes": ["M", "B"] | null,
     "features": [{"name": "radius", "dtype": "double", "categories": null},
                  {"name": "colour", "dtype": "string", "categories": ["red", "blue"]}]}

``classes`` and ``categories`` are in code order (code i is entry i) and keep their JSON-native
types (an integer label's classes stay integers). For an integer label without remapping the code
is the value itself, so ``classes`` is ``[0, 1, ..., num_classes - 1]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_FILE = "schema.json"


def _native(value: Any) -> Any:
    """A JSON-native value (numpy/arrow scalars become Python ints, floats, bools, strings)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def build_schema(
    task: str,
    label: str,
    label_dtype: str,
    features: list[str],
    feature_dtypes: Mapping[str, str],
    label_codes: Mapping[Any, int] | None,
    cat_codes: Mapping[str, Mapping[Any, int]],
    num_classes: int | None,
) -> dict[str, Any]:
    """The schema as a JSON-ready dict (see the module docstring)."""
    classes: list[Any] | None = None
    if task == "classification":
        if label_codes is not None:
            classes = [_native(v) for v, _ in sorted(label_codes.items(), key=lambda kv: kv[1])]
        else:
            classes = list(range(num_classes or 0))
    return {
        "task": task,
        "label": label,
        "label_dtype": label_dtype,
        "classes": classes,
        "features": [
            {
                "name": f,
                "dtype": feature_dtypes[f],
                "categories": (
                    [_native(v) for v, _ in sorted(cat_codes[f].items(), key=lambda kv: kv[1])]
                    if f in cat_codes
                    else None
                ),
            }
            for f in features
        ],
    }


def write_schema(schema: Mapping[str, Any], folder: Path) -> Path:
    """Write ``folder/schema.json`` (atomically) and return its path."""
    from trainer.fileio import atomic_write_text

    return atomic_write_text(folder / SCHEMA_FILE, json.dumps(schema, indent=1))


def read_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a schema.json; a malformed one is a ValueError naming the file."""
    try:
        schema = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"schema {path}: not readable ({err})") from None
    for key in ("task", "label", "classes", "features"):
        if not isinstance(schema, dict) or key not in schema:
            raise ValueError(f"schema {path}: no {key!r} (written by an older prepare_data?)")
    return schema
