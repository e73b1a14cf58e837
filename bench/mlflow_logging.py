"""Benchmark: what MLflow logging costs the training loop, and log_batch throughput.

1. Steady step time of a Trainer fit of the MLP 32→64→10 with ``MLflowLogger`` logging every
   step (``log_every_n_steps=1``; writer thread and inline writer) vs no logger, in the same
   process. Identical fits differ by up to ±10 % on a shared 2-core machine, far more than the
   2 % to resolve, so the comparison is many short fits in rotating order (no logger, thread,
   inline; then the next rotation): each logged fit's ratio is taken against the no-logger fit
   of its own rotation, and the mean of those ratios is given with its 95 % confidence interval.
   Each fit's step is the time between train batch ends: its median and its mean (which counts
   work done every n steps) on the wall clock, and its median on the training thread's CPU clock
   (steal and preemption left out).
   The CPU time other threads (the writer) used during those steps is shown beside them, so the
   thread clock cannot hide work moved to the writer.
2. The Trainer's per-step logging call (``Trainer._log_train_step``: collecting the step values,
   ``MLflowLogger.log_metrics``), timed inside the whole fits of 3. (not in the rotations of 1.,
   where its clock reads would add to the logged fits alone).
3. Whole fits (3 epochs of 1000 steps, alternating): fit wall time per step, which includes run
   creation, the epoch-end writes to the store and closing the run.
4. ``MlflowClient.log_batch`` throughput (1000 metrics per call) and the logger's end-to-end
   throughput (``log_metrics`` + ``save()``), in metrics per second, on a SQLite store.

Run: ``.venv/bin/python bench/mlflow_logging.py`` (full) or ``--smoke`` (tiny counts).
Writes nothing outside a temp folder; prints markdown tables for bench/RESULTS.md.
This is the benchmark issue 6 calls ``bench/logging.py``: a file of that name in bench/ would
stand in for the standard library's ``logging`` in every script run from bench/ (the script's
folder comes first on ``sys.path``) and break them all.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import Callback
from trainer.loggers.mlflow import MLflowLogger
from trainer.module import TrainModule
from trainer.trainer import Trainer


class MLP(TrainModule):
    """MLP 32→64→10, cross-entropy, SGD; logs the train loss on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class StepTimer(Callback):
    """Clock readings at each train batch end: wall, this thread's CPU, the process's CPU."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, float]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.marks.append((math.nan, math.nan, math.nan))  # no step spans an epoch boundary

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.marks.append((time.perf_counter(), time.thread_time(), time.process_time()))

    def steady(self) -> tuple[float, float, float, float]:
        """(median wall step, mean wall step, median thread-CPU step, other threads' CPU per
        step), over the steps inside epochs."""
        pairs = [(a, b) for a, b in zip(self.marks, self.marks[1:]) if not math.isnan(a[0] + b[0])]
        wall = [b[0] - a[0] for a, b in pairs]
        cpu = statistics.median(b[1] - a[1] for a, b in pairs)
        other = sum((b[2] - a[2]) - (b[1] - a[1]) for a, b in pairs) / len(pairs)
        return statistics.median(wall), statistics.fmean(wall), cpu, other


def _loader(n: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch, shuffle=False)


@dataclass
class Fit:
    """One fit's figures, in seconds per optimizer step."""

    wall: float  # fit wall time / steps (run creation, flushes and close included)
    step: float  # steady step, wall clock, median
    step_mean: float  # steady step, wall clock, mean (work done every n steps included)
    step_cpu: float  # steady step, the training thread's CPU time
    other_cpu: float  # CPU time of the other threads during the steady steps
    log_call: float  # inside Trainer._log_train_step (whole fits only; else 0)


def _fit(
    logger, steps_per_epoch: int, epochs: int, batch: int, root: Path, time_log_call: bool
) -> Fit:
    torch.manual_seed(0)
    timer = StepTimer()
    trainer = Trainer(
        max_epochs=epochs,
        logger=logger if logger is not None else False,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=[timer],
    )
    log_step, spent = trainer._log_train_step, [0.0]

    def timed_log_step() -> None:
        t = time.perf_counter()
        log_step()
        spent[0] += time.perf_counter() - t

    if time_log_call:  # its two clock reads would add to the logged fits' steps alone
        trainer._log_train_step = timed_log_step
    dl = _loader(steps_per_epoch * batch, batch)
    t0 = time.perf_counter()
    trainer.fit(MLP(), dl)
    steps = steps_per_epoch * epochs
    wall = (time.perf_counter() - t0) / steps
    return Fit(wall, *timer.steady(), spent[0] / steps)


MODES = ("none", "thread", "inline")  # no logger, MLflowLogger(writer=...)


def _logger(mode: str, uri: str, run_name: str):
    if mode == "none":
        return None
    return MLflowLogger(
        "bench-logging", run_name=run_name, tracking_uri=uri, log_plots=False, writer=mode
    )


def bench_fits(
    uri: str, root: Path, rotations: int, steps: int, epochs: int, batch: int,
    time_log_call: bool = False,
) -> dict[str, list[Fit]]:
    """``rotations`` rounds of one fit per mode, the order rotating each round."""
    _fit(None, 4, 1, batch, root, False)  # warm up torch and the Trainer
    for mode in MODES[1:]:  # warm up mlflow imports, the store and the writer thread
        _fit(_logger(mode, uri, "warmup"), 4, 1, batch, root, False)
    out: dict[str, list[Fit]] = {m: [] for m in MODES}
    for r in range(rotations):
        k = r % len(MODES)
        for mode in MODES[k:] + MODES[:k]:
            lg = _logger(mode, uri, f"{mode}{r}")
            out[mode].append(_fit(lg, steps, epochs, batch, root, time_log_call))
    return out


def ratio_ci(xs: list[float], base: list[float]) -> tuple[float, float, float]:
    """Mean of the per-rotation ratios x/base and its 95 % confidence interval."""
    r = [x / b for x, b in zip(xs, base)]
    m = statistics.fmean(r)
    half = 1.96 * statistics.stdev(r) / math.sqrt(len(r)) if len(r) > 1 else math.nan
    return m, m - half, m + half


def bench_log_batch(uri: str, calls: int) -> float:
    """MlflowClient.log_batch throughput, metrics/s, 1000 metrics per call."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trainer.loggers.mlflow_store import get_or_create_experiment

    client = MlflowClient(uri, uri)
    run = client.create_run(get_or_create_experiment(client, "bench-log-batch", uri))
    ts = int(time.time() * 1000)
    batches = [
        [Metric(f"m{i % 10}", float(i), ts, c * 100 + i // 10) for i in range(1000)]
        for c in range(calls)
    ]
    t0 = time.perf_counter()
    for b in batches:
        client.log_batch(run.info.run_id, metrics=b)
    dt = time.perf_counter() - t0
    client.set_terminated(run.info.run_id)
    return calls * 1000 / dt


def bench_logger_throughput(uri: str, rows: int, per_row: int = 4) -> tuple[float, float]:
    """MLflowLogger: (µs per log_metrics call on the training thread, metrics/s end to end)."""
    lg = MLflowLogger("bench-logger", tracking_uri=uri, log_plots=False)
    lg.log_metrics({"warm": 0.0}, step=0)
    lg.save()
    values = {f"k{i}": float(i) for i in range(per_row)}
    t0 = time.perf_counter()
    call_time = 0.0
    for step in range(rows):
        c0 = time.perf_counter()
        lg.log_metrics(values, step=step)
        call_time += time.perf_counter() - c0
    lg.save()
    dt = time.perf_counter() - t0
    lg.finalize("success")
    return call_time / rows * 1e6, rows * per_row / dt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rotations", type=int, default=150, help="short fits per mode")
    p.add_argument("--steps", type=int, default=120, help="steps of a short fit")
    p.add_argument("--long-repeats", type=int, default=3, help="whole fits per mode")
    p.add_argument("--long-steps", type=int, default=1000, help="steps per epoch, whole fits")
    p.add_argument("--epochs", type=int, default=3, help="epochs of a whole fit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch-calls", type=int, default=20, help="log_batch calls of 1000")
    p.add_argument("--logger-rows", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--smoke", action="store_true", help="tiny counts (a quick check)")
    a = p.parse_args(argv)
    if a.smoke:
        a.rotations, a.steps, a.long_repeats, a.long_steps, a.epochs = 3, 20, 1, 20, 2
        a.batch_calls, a.logger_rows = 2, 500
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="trainflow-bench-logging-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root}/mlflow.db"
        short = bench_fits(uri, root, a.rotations, a.steps, 1, a.batch)
        long = bench_fits(uri, root, a.long_repeats, a.long_steps, a.epochs, a.batch,
                          time_log_call=True)
        batch_tp = bench_log_batch(uri, a.batch_calls)
        call_us, logger_tp = bench_logger_throughput(uri, a.logger_rows)
    med = statistics.median
    print(
        f"# bench/mlflow_logging.py  ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {a.threads})"
    )
    print(
        f"\nMLP 32→64→10, batch {a.batch}, logging every step. Steady step: {a.rotations} "
        f"rotations of {a.steps}-step fits (no logger, writer thread, inline); ratio: mean over "
        "rotations of (logger / no logger of the same rotation), with its 95 % confidence "
        "interval. Target ≤ 1.02.\n"
    )
    print(
        "| logger | step (median, wall) | ratio | mean step (wall) | ratio "
        "| step (median, thread CPU) | ratio | other threads' CPU per step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = short["none"]

    def cell(fits: list[Fit], field: str) -> str:
        m, lo, hi = ratio_ci([getattr(f, field) for f in fits], [getattr(f, field) for f in base])
        return f"{med(getattr(f, field) for f in fits) * 1e6:.1f} µs | {m:.3f} ({lo:.3f}–{hi:.3f})"

    for mode, fits in short.items():
        label = "no logger" if mode == "none" else f"MLflowLogger(writer={mode!r})"
        print(
            f"| {label} | {cell(fits, 'step')} | {cell(fits, 'step_mean')} "
            f"| {cell(fits, 'step_cpu')} | {med(f.other_cpu for f in fits) * 1e6:.1f} µs |"
        )
    print(
        f"\nWhole fits: {a.long_repeats} rotations of {a.epochs} epochs x {a.long_steps} steps; "
        "fit wall / steps includes run creation, the epoch-end writes and closing the run; the "
        "Trainer's per-step logging call (collecting the step values, the logger call) is timed "
        "inside these fits.\n"
    )
    print(
        "| logger | steady step, wall | fit wall / steps | ratio (median) "
        "| logging call per step (in the fit) | that / no-logger step |"
    )
    print("|---|---|---|---|---|---|")
    base = long["none"]
    base_step = med(f.step for f in base)
    for mode, fits in long.items():
        label = "no logger" if mode == "none" else f"MLflowLogger(writer={mode!r})"
        r_wall = med(f.wall / b.wall for f, b in zip(fits, base))
        log_us = med(f.log_call for f in fits)
        print(
            f"| {label} | {med(f.step for f in fits) * 1e6:.1f} µs "
            f"| {med(f.wall for f in fits) * 1e6:.1f} µs | {r_wall:.3f} "
            f"| {log_us * 1e6:.1f} µs | +{log_us / base_step:.2%} |"
        )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| log_batch throughput (1000/call, SQLite) | {batch_tp:,.0f} metrics/s |")
    print(f"| MLflowLogger.log_metrics call (training thread) | {call_us:.2f} µs |")
    print(f"| MLflowLogger end to end (log_metrics + save) | {logger_tp:,.0f} metrics/s |")


if __name__ == "__main__":
    main()
