"""The promotion gate: does a candidate beat the champion? A pure decision, no store access."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


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


def check_gate_args(mode: str, min_delta: float) -> None:
    """Refuse a gate that cannot be applied, naming the argument."""
    if mode not in ("max", "min"):
        raise ValueError(f"promote.mode: must be 'max' or 'min' (got {mode!r})")
    if not (isinstance(min_delta, int | float) and math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"promote.min_delta: must be a finite number >= 0 (got {min_delta!r})")


def decide(
    *,
    version: str,
    metric: str,
    mode: str,
    min_delta: float,
    alias: str,
    candidate_value: float | None,
    recorded_metrics: list[str],
    verified: str,
    require_verified: bool,
    champion_version: str | None,
    champion_value: float | None,
) -> tuple[bool, str]:
    """(promoted, reason) for a candidate against the current ``alias`` holder.

    ``mode="max"``: promoted iff ``candidate - champion > min_delta``; ``mode="min"``: iff
    ``champion - candidate > min_delta``. No champion (or one without a finite value): promoted.
    Never promoted: a candidate without a finite value, or whose export was not verified
    (``verified`` "false"; also "unknown" when ``require_verified``).
    """
    if candidate_value is None:
        return False, (
            f"version {version} has no recorded metric {metric!r} (recorded: {recorded_metrics}); "
            "register it with eval_metrics"
        )
    if not math.isfinite(candidate_value):
        return False, f"version {version}'s {metric} is {candidate_value}, not a finite number"
    if verified == "false" or (require_verified and verified != "true"):
        return False, (
            f"version {version}'s export is not verified (export_verified={verified}); "
            "verify the export against eager before promoting"
        )
    if champion_version is None:
        return True, f"no {alias} yet"
    if champion_version == version:
        return False, f"version {version} is already the {alias}"
    if champion_value is None or not math.isfinite(champion_value):
        return True, f"{alias} version {champion_version} has no finite recorded {metric}"
    gain = candidate_value - champion_value if mode == "max" else champion_value - candidate_value
    better = "higher" if mode == "max" else "lower"
    if gain > min_delta:
        return True, (
            f"{metric} {candidate_value:.6g} beats {alias} v{champion_version}'s "
            f"{champion_value:.6g} by {gain:.6g} > min_delta {min_delta:g} ({better} is better)"
        )
    return False, (
        f"{metric} {candidate_value:.6g} does not beat {alias} v{champion_version}'s "
        f"{champion_value:.6g} by more than min_delta {min_delta:g} "
        f"(gain {gain:.6g}, {better} is better)"
    )
