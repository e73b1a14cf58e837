"""The registry's vocabulary: model-name rule, aliases, tag names, and its one error type.

Standard library only: ``tasks/config.py`` validates ``registry.model_name`` with
:data:`NAME_RULE` while loading a config, before any heavy library is imported.
"""

from __future__ import annotations

import re

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "trainflow."  # lineage tags: trainflow.data_hash, trainflow.code_version, ...
METRIC_TAG = "metric."  # evaluation metrics, read by the promotion gate
EXPORT_TAG = "export."  # export-verification figures
DECISION_TAG = f"{TAG_PREFIX}promotion_decision"
REGISTRATION_TAG = f"{TAG_PREFIX}registration"  # "complete" once a registration finished
ONNX_FILE = "model.onnx"
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE_TEXT = (
    "1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(no '/', ':', '@' or spaces, so that models:/<name>@<alias> stays a valid URI)"
)


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message names the thing and the fix."""


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a legal registry name, else raise ``ValueError`` with the rule."""
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise ValueError(f"registry model name {name!r}: must be {NAME_RULE_TEXT}")
    return name


def to_float(text: str | None) -> float | None:
    """A tag's value as a float, or None when it is missing or not a number."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
