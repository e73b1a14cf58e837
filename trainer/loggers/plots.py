"""Plots logged as artifacts: metric curves per epoch and a confusion-matrix image.

Drawn on bare ``matplotlib.figure.Figure`` objects (Agg canvas, no display, no pyplot state),
with matplotlib imported only when a plot is drawn. Layout margins are fixed rather than fitted
(``tight_layout`` alone cost ≈ 0.3 s per fit of the example pipeline).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["group_metric_keys", "plot_confusion_matrix", "plot_metric_curves"]

_PREFIX = re.compile(r"^(train|val|valid|validation|test)[_/.]")
_SUFFIX = re.compile(r"[_/.](step|epoch)$")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def group_metric_keys(keys: Sequence[str]) -> dict[str, list[str]]:
    """Group metric names into panels: ``train_loss_epoch`` and ``val_loss`` share ``loss``."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        base = _SUFFIX.sub("", _PREFIX.sub("", key)) or key
        groups.setdefault(base, []).append(key)
    return groups


def plot_metric_curves(
    history: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    xlabel: str = "epoch",
    title: str | None = None,
) -> Path | None:
    """Draw one panel per metric family (loss, acc, ...), one line per logged name.

    ``history`` maps a metric name to its ``(x, value)`` points (x: epoch or step). NaN values are
    left out of the lines. Returns the PNG path, or None when there is nothing to draw.
    """
    series = {k: [(x, v) for x, v in pts if not math.isnan(v)] for k, pts in history.items()}
    series = {k: pts for k, pts in series.items() if pts}
    if not series:
        return None
    groups = group_metric_keys(list(series))
    n = len(groups)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(4.5 * cols, 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (base, keys) in zip(axes.flat, groups.items()):
        for key in keys:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=key)
        ax.set_title(base)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    top = 1 - (0.75 if title else 0.4) / (3.4 * rows)  # room for the (super)titles, in inches
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.5 / (3.4 * rows) + 0.05, top=top,
                        wspace=0.3, hspace=0.45)
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: Any,
    path: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted class) as a PNG.

    ``matrix`` is anything ``numpy.asarray`` takes (a tensor on CPU, a nested list).
    ``normalize=True`` shows each row as fractions of its true-class count.
    """
    import numpy as np

    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    cm = np.asarray(matrix, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix: must be square 2-D (got shape {cm.shape})")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names: need {k} names for a {k}x{k} matrix (got {len(names)})")
    if normalize:
        sums = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
    size = max(4.0, min(0.45 * k + 2.0, 14.0))
    fig = _figure(size, size)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=names, rotation=45 if k > 6 else 0, ha="right")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        top = cm.max() if cm.size else 0.0
        for i in range(k):
            for j in range(k):
                text = f"{cm[i, j]:.2f}" if normalize else f"{cm[i, j]:.0f}"
                color = "white" if top and cm[i, j] > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    fig.subplots_adjust(left=0.15, right=0.95, bottom=0.15, top=0.92)
    return _save(fig, path)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
