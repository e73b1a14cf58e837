"""DDP Trainer vs a hand-written torch DDP loop, both in workers started by our launcher.

    .venv/bin/python bench/ddp.py                         # 2 CPU ranks, gloo (issue 4's case)
    .venv/bin/python bench/ddp.py --quick                 # tiny counts, a smoke run
    .venv/bin/python bench/ddp.py --device cuda           # 1 rank on one GPU, NCCL

One launch (torch's elastic launcher, spawn, rendezvous on 127.0.0.1) starts the workers; in
them, rounds alternate: the hand loop (DistributedDataParallel + SGD, the loop a person writes),
then ``Trainer.fit`` on a fresh copy of the same model, each for ``warmup + steps`` optimizer
steps over the same DataLoader (DistributedSampler, batch ``--batch`` per rank). A round's time
per step is measured on rank 0 between the end of step ``warmup`` and the end of the last step
(CUDA synchronized at those two points only). The table shows medians over rounds and their
ratio. Also: launch-to-first-step latency (the caller's ``launch()`` call to the Trainer's first
training batch in rank 0, the same clock) and the round trip of launching a trivial function.

Model: MLP 784 -> 1024 -> 1024 -> 10, cross-entropy on random data, SGD(lr=0.01, momentum=0.9),
fp32. The Trainer's module logs its loss each step (``self.log``), as users do.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainer import Trainer, TrainModule
from trainer.callbacks import Callback
from trainer.strategy import DDPStrategy


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


class MLP(TrainModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(Callback):
    """Wall times at the first batch start and at the end of step ``warmup`` and the last step."""

    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.first_batch: float | None = None
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.first_batch is None:
            self.first_batch = time.time()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()
        elif step == self.total:
            _sync(self.device)
            self.t1 = time.perf_counter()


def _loader(n_steps: int, batch: int, world: int, rank: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    n = n_steps * batch * world
    ds = TensorDataset(torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch, shuffle=False,
                      sampler=DistributedSampler(ds, world, rank, shuffle=False))


def _plain_loader(n_steps: int, batch: int, world: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    n = n_steps * batch * world
    ds = TensorDataset(torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(ds, batch_size=batch, shuffle=False)


def hand_loop(net: nn.Module, loader: DataLoader, device: torch.device, warmup: int,
              total: int) -> float:
    """The DDP loop a person writes; returns seconds per step after warmup."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    model = DistributedDataParallel(net.to(device), device_ids=ids)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t0 = 0.0
    step = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        if step == total:
            break
    _sync(device)
    return (time.perf_counter() - t0) / (total - warmup)


def trainer_fit(net: nn.Module, loader: DataLoader, accelerator: str, devices: int,
                device: torch.device, warmup: int, total: int) -> tuple[float, float]:
    """Trainer.fit for ``total`` steps; (seconds per step after warmup, first-batch wall time)."""
    clock = StepClock(warmup, total, device)
    trainer = Trainer(max_steps=total, max_epochs=1, strategy="ddp", accelerator=accelerator,
                      devices=devices, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(MLP(net), loader)
    return (clock.t1 - clock.t0) / (total - warmup), float(clock.first_batch or 0.0)


def bench_worker(accelerator: str, devices: int, rounds: int, warmup: int, steps: int,
                 batch: int) -> dict[str, Any]:
    """Runs in every rank: alternating rounds; rank 0's figures are returned."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank) if accelerator == "cuda" else torch.device("cpu")
    total = warmup + steps
    base = make_mlp()
    hand, ours, first_batch = [], [], []
    for i in range(rounds):  # the Trainer first in even rounds (round 0: launch latency)
        for which in ("trainer", "hand") if i % 2 == 0 else ("hand", "trainer"):
            if which == "hand":
                hand.append(hand_loop(copy.deepcopy(base), _loader(total, batch, world, rank),
                                      device, warmup, total))
            else:
                t, first = trainer_fit(copy.deepcopy(base), _plain_loader(total, batch, world),
                                       accelerator, devices, device, warmup, total)
                ours.append(t)
                first_batch.append(first)
    return {
        "hand": hand,
        "trainer": ours,
        "first_batch": first_batch[0],
        "threads": torch.get_num_threads(),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def noop() -> int:
    return dist.get_rank()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--devices", type=int, default=None, help="ranks (cpu: 2, cuda: 1)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=256, help="per rank")
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.warmup, a.steps, a.batch = 2, 1, 3, 32
    devices = a.devices or (2 if a.device == "cpu" else 1)
    strategy = DDPStrategy(a.device, devices=devices)

    t = time.time()
    strategy.launcher.launch(noop)
    roundtrip = time.time() - t

    start = time.time()
    r = strategy.launcher.launch(bench_worker, a.device, devices, a.rounds, a.warmup, a.steps,
                                 a.batch)
    latency = r["first_batch"] - start
    hand_ms = statistics.median(r["hand"]) * 1e3
    ours_ms = statistics.median(r["trainer"]) * 1e3
    where = r["card"] or f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    backend = "nccl" if a.device == "cuda" else "gloo"
    print(f"\nDDP step time: {devices} rank(s), {backend}, {where}, "
          f"{r['threads']} thread(s)/rank, torch {torch.__version__}")
    print(f"MLP 784-1024-1024-10, batch {a.batch}/rank, {a.rounds} rounds x {a.steps} steps "
          f"(+{a.warmup} warmup), alternating; medians\n")
    print("| loop | ms/step | ratio |")
    print("|---|---:|---:|")
    print(f"| hand-written DDP | {hand_ms:.2f} | 1.00 |")
    print(f"| Trainer(strategy='ddp') | {ours_ms:.2f} | {ours_ms / hand_ms:.3f} |")
    print(f"\nlaunch to first training batch (rank 0): {latency:.2f} s "
          "(spawn, imports, rendezvous, Trainer setup)")
    print(f"launch round trip of a trivial function: {roundtrip:.2f} s")
    print("per round (ms/step) hand: " + ", ".join(f"{x * 1e3:.2f}" for x in r["hand"]))
    print("per round (ms/step) Trainer: " + ", ".join(f"{x * 1e3:.2f}" for x in r["trainer"]))


if __name__ == "__main__":
    main()
