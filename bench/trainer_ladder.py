"""Where our Trainer's time per step goes beyond a hand loop: a ladder of loops (table).

    .venv/bin/python bench/trainer_ladder.py              # MLP 32-64-10, batch 64
    .venv/bin/python bench/trainer_ladder.py --log        # + self.log and the progress bar

Each rung adds one piece of what ``trainer.fit`` does to the hand loop of bench/trainer_loop.py
(same model, batches and SGD):

1. the hand loop (inline loss); 1a with zero_grad after the forward (the order Lightning's
   closure and ours use); 1b checking each loss with ``math.isfinite(loss.item())`` (our
   default ``on_nonfinite_loss='raise'`` on CPU);
2. the hand loop calling the module's ``training_step``;
3. that loop run inside ``fit`` (from ``on_train_start``: the Trainer's global state, the
   module attached, logging as in a training batch);
4. inside ``fit``, each step through ``Optimization.training_batch``;
5. the fit loop itself (on_train_start to on_train_end: + the per-batch bookkeeping);
6. the whole ``trainer.fit`` call, and (6') a fit of 10 steps: its fixed cost.

With ``--log`` the module logs its loss (on_step, on_epoch, prog_bar) from rung 3 on (self.log
needs a fit) and the Trainer draws its progress bar (called by the fit loop: rungs 5-6).

Rungs 3-5 time only their loop, not fit's setup. All rungs run in one process, pinned to one
core, torch on one thread, in rotated order, ``gc.collect()`` before each run. µs/step is
process CPU time: the median over the alternations, its minimum (the least disturbed run: on a
shared machine the noise only adds), and "vs hand" the median of the paired per-alternation
differences with a 95 % bootstrap interval. The gc columns count the collections per run of
each generation (gc.callbacks): garbage made per step would show there.

On a busy machine the differences of a few µs stay within the noise; instruction counts do not
(valgrind --tool=callgrind, see issue 12's notes), which is how the cuts were found.
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_loop import Net, make_batches, median_interval, mlp  # noqa: E402

from trainer import Trainer  # noqa: E402
from trainer.callbacks import Callback  # noqa: E402
from trainer.results import logging_as  # noqa: E402

Go = Callable[[], float]  # runs the rung, returns its timed CPU seconds


def _sgd(net: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)


def hand(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    opt = _sgd(net, lr)
    net.train()

    def go() -> float:
        c0 = time.process_time()
        for x, y in batches[:steps]:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        return time.process_time() - c0
    return go


def hand_late_zero_grad(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    """The hand loop with zero_grad between the forward and the backward (Lightning's order)."""
    opt = _sgd(net, lr)
    net.train()

    def go() -> float:
        c0 = time.process_time()
        for x, y in batches[:steps]:
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.process_time() - c0
    return go


def hand_isfinite(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    """The hand loop checking each loss (Trainer(on_nonfinite_loss='raise') on CPU)."""
    opt = _sgd(net, lr)
    net.train()

    def go() -> float:
        c0 = time.process_time()
        for x, y in batches[:steps]:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError
            loss.backward()
            opt.step()
        return time.process_time() - c0
    return go


def hand_module(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    module = Net(net, lr, False)
    opt = module.configure_optimizers()
    module.train()

    def go() -> float:
        c0 = time.process_time()
        for i, batch in enumerate(batches[:steps]):
            opt.zero_grad()
            loss = module.training_step(batch, i)
            loss.backward()
            opt.step()
        return time.process_time() - c0
    return go


class _InFit(Callback):
    """Runs ``body(trainer, module)`` from on_train_start and keeps its CPU seconds."""

    def __init__(self, body: Callable[..., None]) -> None:
        self.body = body
        self.seconds = 0.0

    def on_train_start(self, trainer, module) -> None:
        c0 = time.process_time()
        with logging_as(module, trainer._train_results, "train_batch"):  # self.log as in a batch
            self.body(trainer, module)
        self.seconds = time.process_time() - c0


class _FitLoopClock(Callback):
    """CPU seconds from on_train_start to on_train_end: the fit loop without fit's setup."""

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_train_start(self, trainer, module) -> None:
        self.start = time.process_time()

    def on_train_end(self, trainer, module) -> None:
        self.seconds = time.process_time() - self.start


def _trainer(steps: int, log: bool, callbacks: list) -> Trainer:
    if log:
        from rich.console import Console

        from trainer.callbacks.progress import ProgressBar

        callbacks = callbacks + [ProgressBar(
            console=Console(file=io.StringIO(), force_terminal=True))]
    return Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=log, callbacks=callbacks,
                   num_sanity_val_steps=0, enable_model_summary=False)


def in_fit_hand(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    module = Net(net, lr, log)

    def body(trainer, m) -> None:
        opt = trainer.optimizers[0]
        for i, batch in enumerate(batches[:steps]):
            opt.zero_grad()
            loss = m.training_step(batch, i)
            loss.backward()
            opt.step()
    cb = _InFit(body)
    trainer = _trainer(1, log, [cb])

    def go() -> float:
        trainer.fit(module, batches[:1])
        return cb.seconds
    return go


def in_fit_optimization(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    module = Net(net, lr, log)

    def body(trainer, m) -> None:
        opt = trainer._optimization
        for i, batch in enumerate(batches[:steps]):
            opt.training_batch(batch, i, True, True)
            trainer.global_step += 1
        trainer.global_step = 0
    cb = _InFit(body)
    trainer = _trainer(1, log, [cb])

    def go() -> float:
        trainer.fit(module, batches[:1])
        return cb.seconds
    return go


def fit_loop(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    module = Net(net, lr, log)
    clock = _FitLoopClock()
    trainer = _trainer(steps, log, [clock])

    def go() -> float:
        trainer.fit(module, batches[:steps])
        return clock.seconds
    return go


def fit(net: nn.Module, batches: list, steps: int, lr: float, log: bool) -> Go:
    module = Net(net, lr, log)
    trainer = _trainer(steps, log, [])

    def go() -> float:
        c0 = time.process_time()
        trainer.fit(module, batches[:steps])
        return time.process_time() - c0
    return go


RUNGS: dict[str, Callable[..., Go]] = {
    "1 hand loop": hand,
    "1a hand, zero_grad after the forward": hand_late_zero_grad,
    "1b hand + isfinite(loss.item())": hand_isfinite,
    "2 + module.training_step": hand_module,
    "3 + inside fit (on_train_start)": in_fit_hand,
    "4 + Optimization.training_batch": in_fit_optimization,
    "5 + the fit loop (on_train_start to on_train_end)": fit_loop,
    "6 trainer.fit (whole call)": fit,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--alternations", type=int, default=11)
    ap.add_argument("--log", action="store_true", help="self.log + the progress bar")
    ap.add_argument("--no-gc", action="store_true", help="gc.disable() around every run")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    small = make_batches("dense", 64, 50, "cpu", 32)
    batches = (small * (args.steps // len(small) + 1))[:args.steps]
    base = mlp([32, 64, 10])
    lr = 0.01
    rungs = dict(RUNGS)
    rungs["6' trainer.fit, 10 steps (fixed cost)"] = fit
    names = list(rungs)
    steps_of = {k: 10 if k.startswith("6'") else args.steps for k in names}

    collections = [0, 0, 0]

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections[info["generation"]] += 1
    gc.callbacks.append(count)

    def run(k: str) -> tuple[float, list[int]]:
        go = rungs[k](copy.deepcopy(base), batches, steps_of[k], lr, args.log)
        gc.collect()
        collections[:] = [0, 0, 0]
        if args.no_gc:
            gc.disable()
        try:
            return go(), list(collections)
        finally:
            gc.enable()

    for k in names:  # warm up
        rungs[k](copy.deepcopy(base), batches, 50, lr, args.log)()
    secs: dict[str, list[float]] = {k: [] for k in names}
    gcs: dict[str, list[list[int]]] = {k: [] for k in names}
    for a in range(args.alternations):
        turn = a % len(names)
        for k in names[turn:] + names[:turn]:
            s, c = run(k)
            secs[k].append(s)
            gcs[k].append(c)

    hand_us = [s / args.steps * 1e6 for s in secs[names[0]]]
    print(f"MLP 32-64-10, batch 64, {args.steps} steps, {args.alternations} alternations, "
          f"log+bar {'on' if args.log else 'off'}, gc {'off' if args.no_gc else 'on'}, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| rung | µs/step | min µs/step | vs hand µs/step [95 %] | gc collections/run "
          "(gen 0/1/2) |")
    print("|---|---:|---:|---:|---:|")
    for k in names:
        if k.startswith("6'"):
            med = statistics.median(secs[k]) * 1e6
            print(f"| {k} | {med:.0f} µs per fit | | | |")
            continue
        us = [s / args.steps * 1e6 for s in secs[k]]
        d, lo, hi = median_interval([u - h for u, h in zip(us, hand_us)])
        g = [statistics.median(c[i] for c in gcs[k]) for i in range(3)]
        print(f"| {k} | {statistics.median(us):.1f} | {min(us):.1f} | "
              f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] | {g[0]:.0f}/{g[1]:.0f}/{g[2]:.0f} |")


if __name__ == "__main__":
    main()
