"""Benchmark: what MLflow logging costs the training loop, and log_batch throughput.

1. Step time of a Trainer fit of the MLP 32→64→10 with ``MLflowLogger`` logging every step
   (``log_every_n_steps=1``; writer thread and inline writer) vs no logger, in the same process,
   alternating; ratios are medians of per-repeat ratios (each logged fit against the no-logger
   fit just before it, so a load change between repeats cancels out). Steady step = median time
   between batch ends; fit wall = fit time / optimizer steps (run creation, epoch-end flushes
   and close included; the one-off import of mlflow is warmed up before timing).
2. ``MlflowClient.log_batch`` throughput (1000 metrics per call) and the logger's end-to-end
   throughput (``log_metrics`` + ``save()``), in metrics per second, on a SQLite store.

Run: ``.venv/bin/python bench/mlflow_logging.py`` (full) or ``--smoke`` (tiny counts).
Writes nothing outside a temp folder; prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
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
    """Time between consecutive train batch ends inside an epoch (the steady-state step)."""

    def __init__(self) -> None:
        self.deltas: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, trainer, module) -> None:
        self._last = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.deltas.append(now - self._last)
        self._last = now


def _loader(n: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch, shuffle=False)


def _fit_step_time(
    logger, steps_per_epoch: int, epochs: int, batch: int, root: Path
) -> tuple[float, float, float]:
    """(fit wall time / steps, median steady-state step time, time per step inside the
    Trainer's per-step logging call (Trainer._log_train_step, which calls log_metrics)) of one
    fit."""
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
    # The logging call timed from inside the fit: the whole-fit comparison below cannot resolve
    # 1-2 % (identical fits differ by up to ±10 % on this machine), this can.
    log_step, spent = trainer._log_train_step, [0.0]

    def timed_log_step() -> None:
        t = time.perf_counter()
        log_step()
        spent[0] += time.perf_counter() - t

    trainer._log_train_step = timed_log_step
    dl = _loader(steps_per_epoch * batch, batch)
    t0 = time.perf_counter()
    trainer.fit(MLP(), dl)
    steps = steps_per_epoch * epochs
    total = (time.perf_counter() - t0) / steps
    steady = statistics.median(timer.deltas) if timer.deltas else float("nan")
    return total, steady, spent[0] / steps


WRITERS = ("thread", "inline")  # MLflowLogger(writer=...) compared with no logger


def bench_step_time(
    uri: str, root: Path, steps: int, epochs: int, batch: int, repeats: int
) -> dict[str, list[tuple[float, float]]]:
    """Per repeat, alternating: a fit with no logger, then one per MLflowLogger writer (every
    step logged); returns {mode: [(fit wall / steps, steady step), ...]}."""
    _fit_step_time(None, 4, 1, batch, root)  # warm up torch and the Trainer
    for writer in WRITERS:  # warm up mlflow imports, the store and the writer thread
        warm = MLflowLogger("bench-warmup", tracking_uri=uri, log_plots=False, writer=writer)
        _fit_step_time(warm, 4, 1, batch, root)
    out: dict[str, list[tuple[float, float]]] = {"none": [], **{w: [] for w in WRITERS}}
    for r in range(repeats):
        out["none"].append(_fit_step_time(None, steps, epochs, batch, root))
        for writer in WRITERS:
            lg = MLflowLogger(
                "bench-logging",
                run_name=f"{writer}{r}",
                tracking_uri=uri,
                log_plots=False,
                writer=writer,
            )
            out[writer].append(_fit_step_time(lg, steps, epochs, batch, root))
    return out


def bench_log_batch(uri: str, calls: int) -> float:
    """MlflowClient.log_batch throughput, metrics/s, 1000 metrics per call."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from flows.tracking import get_or_create_experiment

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
    p.add_argument("--steps", type=int, default=1000, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-calls", type=int, default=20, help="log_batch calls of 1000")
    p.add_argument("--logger-rows", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--smoke", action="store_true", help="tiny counts (a quick check)")
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.epochs, a.repeats, a.batch_calls, a.logger_rows = 20, 2, 1, 2, 500
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="trainflow-bench-logging-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root}/mlflow.db"
        times = bench_step_time(uri, root, a.steps, a.epochs, a.batch, a.repeats)
        batch_tp = bench_log_batch(uri, a.batch_calls)
        call_us, logger_tp = bench_logger_throughput(uri, a.logger_rows)
    med = statistics.median
    base = times["none"]
    print(
        f"# bench/mlflow_logging.py  ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {a.threads})"
    )
    print(
        f"MLP 32→64→10, batch {a.batch}, {a.steps} steps x {a.epochs} epochs, {a.repeats} "
        "repeats alternating no logger / MLflowLogger every step (writer thread, inline); "
        "ratio: median over repeats of (logger / the no-logger fit just before)\n"
    )
    print(
        "| logger | steady step (median between batch ends) | ratio (target ≤ 1.02) "
        "| per-repeat ratios (min–max) | logging call per step (timed in the fit) "
        "| that / no-logger step | fit wall / steps (run start, flushes, close) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base_steady = med(b[1] for b in base)
    for mode, rows in times.items():
        steady = med(x[1] for x in rows)
        wall = med(x[0] for x in rows)
        ratios = [x[1] / b[1] for x, b in zip(rows, base)]
        r_wall = med(x[0] / b[0] for x, b in zip(rows, base))
        log_us = med(x[2] for x in rows)
        label = "no logger" if mode == "none" else f"MLflowLogger(writer={mode!r})"
        print(
            f"| {label} | {steady * 1e6:.1f} µs | {med(ratios):.3f} "
            f"| {min(ratios):.3f}–{max(ratios):.3f} | {log_us * 1e6:.1f} µs "
            f"| +{log_us / base_steady:.2%} | {wall * 1e6:.1f} µs | {r_wall:.3f} |"
        )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| log_batch throughput (1000/call, SQLite) | {batch_tp:,.0f} metrics/s |")
    print(f"| MLflowLogger.log_metrics call (training thread) | {call_us:.2f} µs |")
    print(f"| MLflowLogger end to end (log_metrics + save) | {logger_tp:,.0f} metrics/s |")


if __name__ == "__main__":
    main()
