"""How far an export is from eager PyTorch: worst errors per backend and output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class OutputStats:
    """Worst error of one output of one backend over all batches checked."""

    backend: str  # "onnx" | "torchscript"
    output: str
    max_abs: float = 0.0
    max_rel: float = 0.0  # max |a - r| / |r| over elements with r != 0
    mismatched: int = 0  # elements outside atol + rtol * |r|
    numel: int = 0
    worst_batch_size: int | None = None
    note: str = ""  # shape/dtype problems

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and not self.note


@dataclass
class VerifyReport:
    """Max abs / rel error per backend and output, from :func:`verify`."""

    atol: float
    rtol: float
    batch_sizes: list[int]
    backends: list[str]
    stats: dict[str, dict[str, OutputStats]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for per in self.stats.values() for s in per.values())

    def max_abs(self, backend: str | None = None) -> float:
        return max((s.max_abs for s in self._of(backend)), default=0.0)

    def max_rel(self, backend: str | None = None) -> float:
        return max((s.max_rel for s in self._of(backend)), default=0.0)

    def _of(self, backend: str | None) -> list[OutputStats]:
        return [s for b, per in self.stats.items() if backend in (None, b) for s in per.values()]

    def failures(self) -> list[OutputStats]:
        return [s for per in self.stats.values() for s in per.values() if not s.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (for the pipeline's ExportRef / MLflow)."""
        return {
            "ok": self.ok,
            "atol": self.atol,
            "rtol": self.rtol,
            "batch_sizes": self.batch_sizes,
            "backends": self.backends,
            "stats": {b: {o: asdict(s) for o, s in per.items()} for b, per in self.stats.items()},
        }

    def __str__(self) -> str:
        rows = [f"{'backend':<12} {'output':<24} {'max abs':>10} {'max rel':>10}  ok"]
        for b, per in self.stats.items():
            for o, s in per.items():
                rows.append(
                    f"{b:<12} {o:<24} {s.max_abs:>10.3g} {s.max_rel:>10.3g}  "
                    f"{'yes' if s.ok else 'NO ' + s.note}"
                )
        return "\n".join(rows)


def compare(
    stats: OutputStats, got: Any, ref: Tensor, batch: int | None, atol: float, rtol: float
) -> None:
    """Fold one batch's output ``got`` against eager ``ref`` into ``stats``."""
    got_t = torch.as_tensor(got).detach().cpu()
    ref = ref.detach().cpu()
    if tuple(got_t.shape) != tuple(ref.shape):
        stats.note = f"shape {tuple(got_t.shape)} != eager {tuple(ref.shape)} at batch {batch}"
        return
    g, r = got_t.to(torch.float64), ref.to(torch.float64)
    diff = (g - r).abs()
    # NaN where eager has NaN too is a match; any other NaN is an infinite error.
    both_nan = torch.isnan(g) & torch.isnan(r)
    diff = torch.where(both_nan, 0.0, torch.nan_to_num(diff, nan=math.inf))
    bad = diff > atol + rtol * r.abs().nan_to_num(nan=0.0)
    max_abs = float(diff.max()) if diff.numel() else 0.0
    nz = (r != 0) & ~torch.isnan(r)
    max_rel = float((diff[nz] / r[nz].abs()).max()) if bool(nz.any()) else 0.0
    stats.numel += diff.numel()
    stats.mismatched += int(bad.sum())
    if max_abs >= stats.max_abs:
        stats.worst_batch_size = batch
    stats.max_abs = max(stats.max_abs, max_abs)
    stats.max_rel = max(stats.max_rel, max_rel)
