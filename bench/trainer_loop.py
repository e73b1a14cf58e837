"""Trainer (and Lightning) vs a hand-written PyTorch loop: time per optimizer step (table).

    .venv/bin/python bench/trainer_loop.py                 # the CPU cases (targets: issue 12)
    .venv/bin/python bench/trainer_loop.py --quick         # tiny counts, a smoke run
    .venv/bin/python bench/trainer_loop.py --device cuda   # + a small bf16-mixed transformer

Protocol (so a target of a few percent can be decided on a loaded 2-core machine):

- Paired, interleaved runs. A repeat is ``--blocks`` rounds; each round runs the hand loop, our
  Trainer and pytorch-lightning's Trainer once each on fresh copies of the same model and the
  same batches, the order rotating from round to round (hand/ours/pl, ours/pl/hand, ...), so a
  slow spell of the machine falls on each in turn and never on one alone. A repeat's ratio is
  ours / hand of its own rounds (Lightning / hand likewise), so a slow repeat cancels out.
- CPU time, wall time beside it. Each run is timed with ``time.process_time()`` (the CPU time
  of all the process's threads, so a helper thread such as a progress-bar refresher is
  counted) and ``time.perf_counter()``. CPU time is the cost a user pays for the loop; unlike
  the wall clock it leaves out the time the process waited while other jobs had the core, which
  on a shared machine is most of the noise. The verdict uses CPU time; the last column gives the
  wall-clock ratio of the same runs, so a cost hidden off-CPU (waiting on a device, sleeping)
  would still show as a gap between the two.
- One core. The process is pinned to one core (``os.sched_setaffinity``; ``--cpu -1``: not
  pinned) and torch to one thread (CPU), so the three loops run on the same core with the same
  caches and none of them gains from a second core the others could not use.
- Longer runs. Each run is ``--steps`` optimizer steps (default 3000 on the small MLP), so the
  per-run fixed costs (our Trainer's and Lightning's whole fit() call is timed, setup included;
  the hand loop's optimizer is built before its clock starts, which counts against us) are a
  small share, and a gc.collect() before every run keeps one run's garbage out of the next.
- The figure: the median of the per-repeat ratios over ``--repeats`` (>= 15) with a 95 %
  bootstrap interval of that median (2000 resamples, fixed seed), and a verdict per target:
  "met" when the whole interval is at or below the target, "missed" when it is wholly above,
  "undecided" when it straddles it (run more repeats, or on a quieter machine). The µs/step
  columns are CPU time per step, medians over the repeats. Lightning is for comparison, "n/a"
  when neither ``lightning`` nor ``pytorch_lightning`` is installed.
- The load average is printed at the start and the end; above 1.5 (this bench keeps one core
  busy) the run says so: CPU time leaves out waiting for the core but not other jobs' traffic
  through the shared caches and memory, nor time a VM's host took back, so a verdict wants a
  quiet machine.

The same work is timed for all three: batches are pre-built tensors in a list (on the device,
one epoch of all the steps), so the figures compare loop overhead, not data loading. Both
Trainers get logger=False, no checkpointing, no sanity validation and enable_model_summary=False
(neither prints a model summary); with the bar on, each draws a rich progress bar into a buffer
(ours: ProgressBar, Lightning: RichProgressBar). Lightning runs max_epochs=1 over the `steps`
batches (the same list, wrapped in a plain iterable, as Lightning reads a bare list as several
dataloaders); ours runs max_steps=steps. The 784-1024 MLP runs one block per repeat (its runs
are long already).
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import logging
import os
import random
import statistics
import time
import warnings

import torch
from torch import nn

from trainer import Trainer, TrainModule

try:  # pytorch-lightning, for comparison only
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError:
        pl = None


class Net(TrainModule):
    def __init__(self, net: nn.Module, lr: float, log: bool) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.do_log = log

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        if self.do_log:
            self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


if pl is not None:
    # quiet its "GPU available: ..." info lines and fit-time warnings so the table stays readable
    logging.getLogger(pl.__name__).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning|lightning_fabric)")

    class PLNet(pl.LightningModule):
        """``Net`` as a Lightning module: the same step, logging and optimizer."""

        def __init__(self, net: nn.Module, lr: float, log: bool) -> None:
            super().__init__()
            self.net = net
            self.lr = lr
            self.do_log = log

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            if self.do_log:
                self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TokenClassifier(nn.Module):
    """A small transformer encoder over token ids, mean-pooled into classes."""

    def __init__(self, vocab=1000, d=256, heads=4, layers=4, n_cls=10) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d, n_cls)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def mlp(sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def make_batches(kind: str, batch: int, n: int, device: str, d_in: int = 0):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if kind == "tokens":
            x = torch.randint(0, 1000, (batch, 128), generator=g)
        else:
            x = torch.randn(batch, d_in, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        out.append((x.to(device), y.to(device)))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(go, device: str) -> tuple[float, float]:
    """(CPU seconds of the whole process, wall seconds) of ``go()``, after a gc.collect() so
    one run's garbage is not collected inside the next one's timing."""
    gc.collect()
    sync(device)
    c0, w0 = time.process_time(), time.perf_counter()
    go()
    sync(device)
    return time.process_time() - c0, time.perf_counter() - w0


def hand_loop(net, batches, steps, lr, device, amp):
    """The loop one writes by hand; returns it, ready to be timed."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()

    def go() -> None:
        step = 0
        while step < steps:
            for x, y in batches:
                opt.zero_grad()
                if amp:
                    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                        loss = nn.functional.cross_entropy(net(x), y)
                else:
                    loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                step += 1
                if step == steps:
                    break
    return go


def trainer_loop(net, batches, steps, lr, device, amp, log, bar):
    """Our Trainer built on the module; returns its whole fit() call, ready to be timed."""
    module = Net(net, lr, log)
    callbacks = []
    if bar:
        from rich.console import Console

        from trainer.callbacks.progress import ProgressBar

        # a real bar, drawn into a buffer so the table stays readable
        callbacks.append(ProgressBar(console=Console(file=io.StringIO(), force_terminal=True)))
    trainer = Trainer(max_steps=steps, accelerator="cuda" if device.startswith("cuda") else "cpu",
                      devices=1, precision="bf16-mixed" if amp else "32-true", logger=False,
                      enable_checkpointing=False, enable_progress_bar=bar, callbacks=callbacks,
                      num_sanity_val_steps=0, enable_model_summary=False)
    return lambda: trainer.fit(module, batches)


class Batches:
    """The batch list as one iterable: Lightning takes a bare list for a list of dataloaders."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_loop(net, batches, steps, lr, device, amp, log, bar):
    """pytorch-lightning's Trainer on the same module and batches (one epoch of `steps`)."""
    assert len(batches) == steps
    module = PLNet(net, lr, log)
    loader = Batches(batches)
    callbacks = []
    if bar:
        # a real bar, drawn into a buffer as ours is
        callbacks.append(pl.callbacks.RichProgressBar(
            console_kwargs={"file": io.StringIO(), "force_terminal": True}))
    trainer = pl.Trainer(max_epochs=1, accelerator="cuda" if device.startswith("cuda") else "cpu",
                         devices=1, precision="bf16-mixed" if amp else "32-true", logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=bar, callbacks=callbacks, num_sanity_val_steps=0)

    def go() -> None:
        trainer.fit(module, loader)
        assert trainer.global_step == steps, (trainer.global_step, steps)
    return go


def median_interval(xs: list[float], resamples: int = 2000, seed: int = 0
                    ) -> tuple[float, float, float]:
    """The median of ``xs`` and a 95 % percentile-bootstrap interval of it."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return statistics.median(xs), meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def verdict(lo: float, hi: float, target: float | None) -> str:
    if target is None:
        return ""
    return "met" if hi <= target else "missed" if lo > target else "undecided"


def run_case(name, make_net, batches, steps, lr, device, amp, log, bar, repeats, blocks,
             target):
    batches = (batches * (steps // len(batches) + 1))[:steps]  # one epoch of `steps` batches
    base = make_net().to(device)
    warm = max(steps // 10, 5)
    runners = {
        "hand": lambda b, n: hand_loop(copy.deepcopy(base), b, n, lr, device, amp),
        "ours": lambda b, n: trainer_loop(copy.deepcopy(base), b, n, lr, device, amp, log, bar),
    }
    if pl is not None:
        runners["pl"] = lambda b, n: lightning_loop(copy.deepcopy(base), b, n, lr, device, amp,
                                                    log, bar)
    for make in runners.values():  # warm up (imports, allocator, first-call caches)
        timed(make(batches[:warm], warm), device)
    names = list(runners)
    # per repeat and runner: summed (cpu, wall) seconds over the repeat's blocks
    cpu = {k: [0.0] * repeats for k in names}
    wall = {k: [0.0] * repeats for k in names}
    for r in range(repeats):
        for b in range(blocks):
            turn = (r * blocks + b) % len(names)
            for k in names[turn:] + names[:turn]:  # rotated order, block by block
                c, w = timed(runners[k](batches, steps), device)
                cpu[k][r] += c
                wall[k][r] += w

    def per_step(xs: list[float]) -> float:  # median over the repeats, µs per step
        return statistics.median(xs) / (blocks * steps) * 1e6

    def ratio(k: str, clock: dict[str, list[float]]) -> str:
        med, lo, hi = median_interval([t / h for t, h in zip(clock[k], clock["hand"])])
        return f"{med:.3f} [{lo:.3f}, {hi:.3f}]"

    med, lo, hi = median_interval([t / h for t, h in zip(cpu["ours"], cpu["hand"])])
    if "pl" in cpu:
        pl_cols = f"{per_step(cpu['pl']):>9.1f} | {ratio('pl', cpu)}"
    else:
        pl_cols = f"{'n/a':>9} | n/a"
    tgt = "" if target is None else f"<= {target:.2f}"
    print(f"| {name:<44} | {steps:>5} | {per_step(cpu['hand']):>9.1f} | "
          f"{per_step(cpu['ours']):>9.1f} | {med:.3f} [{lo:.3f}, {hi:.3f}] | {tgt:>7} | "
          f"{verdict(lo, hi, target):>9} | {pl_cols} | {ratio('ours', wall)} |", flush=True)
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=15,
                    help="paired repeats per case (>= 15 for a verdict)")
    ap.add_argument("--blocks", type=int, default=3,
                    help="rotated hand/ours/Lightning rounds summed into one repeat (small MLP)")
    ap.add_argument("--steps", type=int, default=3000, help="steps of each small-MLP run")
    ap.add_argument("--large-steps", type=int, default=300, help="steps of each 784-1024 run")
    ap.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=None,
                    help="the core to pin the process to (default: the last one allowed; "
                    "-1: no pinning)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.blocks, args.steps, args.large_steps = 3, 1, 100, 10
    pinned = "not pinned"
    if args.cpu != -1 and hasattr(os, "sched_setaffinity"):
        core = max(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
        os.sched_setaffinity(0, {core})
        pinned = f"pinned to core {core}"
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dev = args.device
    cpu_name = ""
    try:
        cpu_name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                        if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    card = torch.cuda.get_device_name(0) if dev.startswith("cuda") else cpu_name
    pl_version = f"pytorch-lightning {pl.__version__}" if pl is not None else "no lightning"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {pl_version}, device {dev} ({card}), threads "
          f"{torch.get_num_threads()}, cores {os.cpu_count()}, {pinned}, load {load:.2f}; "
          f"{args.repeats} repeats of {args.blocks} rotated hand/ours/Lightning blocks "
          f"(the 784-1024 MLP: 1 block); µs/step: process CPU time, median over the repeats; "
          "ratios: median of the per-repeat ratios [95 % bootstrap interval], CPU time, "
          "then the same on the wall clock")
    print("| case                                         | steps | hand µs/step | trainer µs/step "
          "| ratio [95 %] | target | verdict | lightning µs/step | lightning ratio [95 %] "
          "| wall ratio [95 %] |")
    print("|---|---:|---:|---:|---:|---:|:-:|---:|---:|---:|")
    small = make_batches("dense", 64, 50, dev, 32)
    run_case("MLP 32-64-10, batch 64, no logging", lambda: mlp([32, 64, 10]), small,
             args.steps, 0.01, dev, False, False, False, args.repeats, args.blocks, 1.03)
    run_case("  + self.log(on_step, on_epoch, prog_bar), bar on", lambda: mlp([32, 64, 10]),
             small, args.steps, 0.01, dev, False, True, True, args.repeats, args.blocks, 1.10)
    large = make_batches("dense", 256, 10, dev, 784)
    run_case("MLP 784-1024-1024-10, batch 256", lambda: mlp([784, 1024, 1024, 10]), large,
             args.large_steps, 0.01, dev, False, False, False, args.repeats, 1, 1.02)
    if dev.startswith("cuda"):
        tokens = make_batches("tokens", 32, 10, dev)
        run_case("transformer 4x256, seq 128, batch 32, bf16-mixed", TokenClassifier, tokens,
                 max(args.large_steps, 20), 0.01, dev, True, True, False, args.repeats,
                 args.blocks, None)
    if hasattr(os, "getloadavg"):
        end = os.getloadavg()[0]
        busy = max(load, end) > 1.5  # this bench itself keeps one core busy
        print(f"load at the end {end:.2f}" + (
            " (other jobs shared the machine: CPU time still counts their cache and memory "
            "traffic and a VM's stolen time, so rerun on a quiet machine for a verdict)"
            if busy else ""))


if __name__ == "__main__":
    main()
