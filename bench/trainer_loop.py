"""Trainer (and Lightning) vs a hand-written PyTorch loop: time per optimizer step (table).

    .venv/bin/python bench/trainer_loop.py                 # the CPU cases (targets: issue 12)
    .venv/bin/python bench/trainer_loop.py --quick         # tiny counts, a smoke run
    .venv/bin/python bench/trainer_loop.py --device cuda   # + a small bf16-mixed transformer

Protocol (so a target of a few percent can be decided on a loaded machine): each repeat runs the
hand loop, our Trainer and pytorch-lightning's Trainer once each on fresh copies of the same
model, the order rotating from repeat to repeat (hand/ours/pl, ours/pl/hand, pl/hand/ours, ...),
so a slow spell of the machine falls on each in turn. Each repeat gives a paired ratio (ours /
hand of the same repeat, Lightning / hand); the table shows the median of those ratios over the
repeats (>= 15 by default) with a 95 % bootstrap interval of that median (2000 resamples, fixed
seed), and a verdict per target: "met" when the whole interval is at or below the target,
"missed" when it is wholly above, "undecided" when it straddles it (run more repeats, or on a
quieter machine). The µs/step columns are medians over the repeats. Lightning is for comparison,
"n/a" when neither ``lightning`` nor ``pytorch_lightning`` is installed.
torch.set_num_threads(1) (CPU). Batches are pre-built tensors in a list (on the device, one epoch
of all the steps), so the figures compare loop overhead, not data loading; each Trainer's time is
its whole fit() call (setup included). Both Trainers get logger=False, no checkpointing, no
sanity validation and enable_model_summary=False (neither prints a model summary); with the bar
on, each draws a rich progress bar into a buffer (ours: ProgressBar, Lightning: RichProgressBar).
Lightning runs max_epochs=1 over the `steps` batches (the same list, wrapped in a plain
iterable, as Lightning reads a bare list as several dataloaders); ours runs max_steps=steps.
"""

from __future__ import annotations

import argparse
import copy
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


def hand_loop(net, batches, steps, lr, device, amp) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    sync(device)
    t0 = time.perf_counter()
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
    sync(device)
    return (time.perf_counter() - t0) / steps


def trainer_loop(net, batches, steps, lr, device, amp, log, bar) -> float:
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
    sync(device)
    t0 = time.perf_counter()
    trainer.fit(module, batches)
    sync(device)
    return (time.perf_counter() - t0) / steps


class Batches:
    """The batch list as one iterable: Lightning takes a bare list for a list of dataloaders."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_loop(net, batches, steps, lr, device, amp, log, bar) -> float:
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
    sync(device)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    sync(device)
    elapsed = time.perf_counter() - t0
    assert trainer.global_step == steps, (trainer.global_step, steps)
    return elapsed / steps


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


def run_case(name, make_net, batches, steps, lr, device, amp, log, bar, repeats, target):
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
    for run in runners.values():  # warm up (imports, allocator, first-call caches)
        run(batches[:warm], warm)
    names = list(runners)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:  # rotated order
            times[k].append(runners[k](batches, steps))
    hand = times["hand"]
    med = {k: statistics.median(v) for k, v in times.items()}
    ours_ratio, lo, hi = median_interval([t / h for t, h in zip(times["ours"], hand)])
    if "pl" in times:
        pl_ratio, pl_lo, pl_hi = median_interval([t / h for t, h in zip(times["pl"], hand)])
        pl_cols = f"{med['pl'] * 1e6:>9.1f} | {pl_ratio:.3f} [{pl_lo:.3f}, {pl_hi:.3f}]"
    else:
        pl_cols = f"{'n/a':>9} | n/a"
    tgt = "" if target is None else f"<= {target:.2f}"
    print(f"| {name:<44} | {steps:>5} | {med['hand'] * 1e6:>9.1f} | {med['ours'] * 1e6:>9.1f} | "
          f"{ours_ratio:.3f} [{lo:.3f}, {hi:.3f}] | {tgt:>7} | {verdict(lo, hi, target):>9} | "
          f"{pl_cols} |", flush=True)
    return ours_ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=15,
                    help="rotations of hand/ours/Lightning per case (>= 15 for a verdict)")
    ap.add_argument("--steps", type=int, default=2000, help="steps of the small MLP cases")
    ap.add_argument("--large-steps", type=int, default=300, help="steps of the 784-1024 MLP")
    ap.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.steps, args.large_steps = 3, 100, 10
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
    print(f"torch {torch.__version__}, {pl_version}, device {dev} ({card}), threads "
          f"{torch.get_num_threads()}, cores {os.cpu_count()}, {args.repeats} rotated repeats; "
          "ratios: median of the per-repeat ratios [95 % bootstrap interval]")
    print("| case                                         | steps | hand µs/step | trainer µs/step "
          "| ratio [95 %] | target | verdict | lightning µs/step | lightning ratio [95 %] |")
    print("|---|---:|---:|---:|---:|---:|:-:|---:|---:|")
    small = make_batches("dense", 64, 50, dev, 32)
    run_case("MLP 32-64-10, batch 64, no logging", lambda: mlp([32, 64, 10]), small,
             args.steps, 0.01, dev, False, False, False, args.repeats, 1.03)
    run_case("  + self.log(on_step, on_epoch, prog_bar), bar on", lambda: mlp([32, 64, 10]),
             small, args.steps, 0.01, dev, False, True, True, args.repeats, 1.10)
    large = make_batches("dense", 256, 10, dev, 784)
    run_case("MLP 784-1024-1024-10, batch 256", lambda: mlp([784, 1024, 1024, 10]), large,
             args.large_steps, 0.01, dev, False, False, False, args.repeats, 1.02)
    if dev.startswith("cuda"):
        tokens = make_batches("tokens", 32, 10, dev)
        run_case("transformer 4x256, seq 128, batch 32, bf16-mixed", TokenClassifier, tokens,
                 max(args.large_steps, 20), 0.01, dev, True, True, False, args.repeats, None)


if __name__ == "__main__":
    main()
