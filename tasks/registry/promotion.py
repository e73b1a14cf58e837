"""Promotion: move an alias (``champion``) to a version only if the gate says it is better.

Read the candidate and the current champion, decide (tasks/registry/gate.py), move the alias,
record the decision on the candidate: all under the registry lock, so of two racing promotions
the later one compares against the earlier one's result. A version that already holds the alias
(a rerun) is answered from one read, without the lock, and its record is left as it was.
"""

from __future__ import annotations

import datetime as _dt

from tasks.registry.gate import PromotionDecision, check_gate_args, decide
from tasks.registry.lock import registry_lock
from tasks.registry.names import (
    CHAMPION,
    DECISION_TAG,
    METRIC_TAG,
    TAG_PREFIX,
    RegistryError,
    to_float,
    validate_model_name,
)
from tasks.registry.versions import alias_version, client_for, is_missing, store_uri


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
    registration; the rule is :func:`tasks.registry.gate.decide`'s. The decision is returned and
    written to the candidate's ``trainflow.promotion_decision`` tag. Runs under the registry
    lock, so two racing promotions leave the alias on the better version.
    """
    validate_model_name(name)
    check_gate_args(mode, min_delta)
    from mlflow.exceptions import MlflowException

    uri = store_uri(tracking_uri)
    client = client_for(uri)
    version = str(version)
    gate = {"metric": metric, "mode": mode, "min_delta": float(min_delta), "alias": alias,
            "require_verified": require_verified}
    holder = alias_version(client, name, alias)
    if holder is not None and str(holder.version) == version:
        # Already the alias holder (a rerun of a finished pipeline): nothing to move, so no
        # lock and no write, and the record of why it was promoted stays on it.
        return _decision(name, holder, holder, **gate)
    with registry_lock(uri, name=name):
        try:
            cand = client.get_model_version(name, version)
        except MlflowException as exc:
            if is_missing(exc):
                raise RegistryError(
                    f"promote: no version {version} of registered model {name!r} in {uri}"
                ) from None
            raise
        current = alias_version(client, name, alias)  # again: it may have moved meanwhile
        decision = _decision(name, cand, current, **gate)
        if decision.promoted:
            client.set_registered_model_alias(name, alias, version)
            if decision.champion_version is not None:
                client.set_model_version_tag(
                    name, decision.champion_version, f"{TAG_PREFIX}superseded_by", version
                )
        client.set_model_version_tag(name, version, DECISION_TAG, decision.to_json())
    return decision


def _decision(
    name: str, cand: object, current: object | None, *, metric: str, mode: str,
    min_delta: float, alias: str, require_verified: bool,
) -> PromotionDecision:
    """The gate's decision for candidate version ``cand`` against the alias holder ``current``
    (both MLflow ``ModelVersion``s; ``current`` None when the alias is unset)."""
    # what the gate judges on, and what the record keeps of it
    judged = {
        "version": str(cand.version),
        "metric": metric,
        "mode": mode,
        "min_delta": min_delta,
        "alias": alias,
        "candidate_value": to_float(cand.tags.get(METRIC_TAG + metric)),
        "champion_version": str(current.version) if current is not None else None,
        "champion_value": (
            to_float(current.tags.get(METRIC_TAG + metric)) if current is not None else None
        ),
    }
    promoted, reason = decide(
        **judged,
        recorded_metrics=sorted(
            k[len(METRIC_TAG) :] for k in cand.tags if k.startswith(METRIC_TAG)
        ),
        verified=cand.tags.get(f"{TAG_PREFIX}export_verified", "unknown"),
        require_verified=require_verified,
    )
    return PromotionDecision(
        name=name, **judged, promoted=promoted, reason=reason,
        decided_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
