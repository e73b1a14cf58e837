"""The model registry: register exports with their lineage, gate promotion, load the champion.

Plain functions (no Prefect decorators); ``tasks/register.py`` wraps them in tasks. One idea per
module, read in this order:

- ``names``: the model-name rule, aliases, tag names, :class:`RegistryError` (stdlib only:
  the config validates names with it).
- ``hashing``: content identities (config hash, export hash); ``provenance``: git commit and
  Prefect flow run of a registration.
- ``versions``: reading the store (a version by alias or content, its lineage).
- ``lock``: one writer per registered model, shared by every machine (tasks/promotion_lock.py).
- ``signature``: what a registered model takes and answers.
- ``registration``: :func:`register_model` (alias ``challenger``, idempotent on content).
- ``gate`` and ``promotion``: :func:`promote` moves ``champion`` only if the candidate's metric
  beats the champion's by more than ``min_delta``, and records the decision.
- ``loading``: :func:`load_champion` / :func:`load_champion_torchscript`.
- every reach into MLflow's internals (its global URIs, its package scan) is
  ``trainer/loggers/mlflow_private.py``.

Importing this package imports no third-party library: each function imports what it needs.
"""

from tasks.registry.gate import PromotionDecision
from tasks.registry.hashing import config_hash, export_content_hash
from tasks.registry.loading import download_version, load_champion, load_champion_torchscript
from tasks.registry.lock import registry_lock
from tasks.registry.names import (
    CHALLENGER,
    CHAMPION,
    NAME_RULE,
    NAME_RULE_TEXT,
    RegistryError,
    validate_model_name,
)
from tasks.registry.promotion import promote
from tasks.registry.provenance import code_version, flow_run_id
from tasks.registry.registration import RegisteredVersion, register_model
from tasks.registry.signature import column_signature
from tasks.registry.versions import get_alias_version, lineage

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "NAME_RULE",
    "NAME_RULE_TEXT",
    "PromotionDecision",
    "RegisteredVersion",
    "RegistryError",
    "code_version",
    "column_signature",
    "config_hash",
    "download_version",
    "export_content_hash",
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
