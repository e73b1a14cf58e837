"""The table ``validate`` / ``test`` print with ``verbose=True``: one row per metric, one column
per loader (Lightning's layout: "Test metric | DataLoader 0 | DataLoader 1")."""

from __future__ import annotations

from typing import Any

__all__ = ["results_table", "print_results"]


def results_table(stage: str, results: list[dict[str, float]]) -> Any:
    """A ``rich.table.Table`` of ``results`` (one dict per loader), or None when nothing was
    logged. Names lose their ``/dataloader_idx_N`` suffix: the column says which loader."""
    from rich.table import Column, Table

    per_loader = [{k.split("/dataloader_idx_")[0]: v for k, v in r.items()} for r in results]
    names = sorted({k for r in per_loader for k in r})
    if not names:
        return None
    columns = [Column(f"{stage.capitalize()} metric", style="cyan")]
    columns += [Column(f"DataLoader {i}", justify="center", style="magenta")
                for i in range(len(per_loader))]
    table = Table(*columns)
    for name in names:
        table.add_row(name, *(f"{r[name]}" if name in r else " " for r in per_loader))
    return table


def print_results(stage: str, results: list[dict[str, float]]) -> None:
    """Print the table to stdout (nothing when no metric was logged)."""
    from rich.console import Console

    table = results_table(stage, results)
    if table is not None:
        Console().print(table)
