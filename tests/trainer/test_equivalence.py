"""The Trainer's weights equal a hand-written PyTorch loop's, bit for bit (fp32, CPU).

The hand loop is ``for x, y in loader:``, which runs the loader's iterator to StopIteration at
each epoch's end: RandomSampler draws from the loader's generator once more there, so the next
epoch's order depends on it. The sizes below include exact multiples of the batch size (where a
loop that stops after len(loader) batches would diverge from epoch 2 on) and drop_last.
"""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, flat, make_data, make_loader, make_net
from torch import nn

from trainer import Trainer

WARMUP = 5  # optimizer steps of linear LR warm-up in the optimizer_step cases


def hand_loop(epochs: int, n: int = 60, bs: int = 8, drop_last: bool = False, accum: int = 1,
              clip: float | None = None, clip_algo: str = "norm", sched: bool = False,
              warmup: bool = False) -> torch.Tensor:
    """The loop a person writes: one DataLoader with its own generator, iterated each epoch."""
    torch.manual_seed(1234)
    dl = make_loader(make_data(n=n), batch_size=bs, drop_last=drop_last)
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if sched else None
    steps = 0
    model.train()
    for _ in range(epochs):
        last_batch = len(dl) - 1
        for i, (x, y) in enumerate(dl):
            if i % accum == 0:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if accum > 1:
                loss = loss / accum
            loss.backward()
            if (i + 1) % accum == 0 or i == last_batch:
                if clip is not None:
                    if clip_algo == "norm":
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                    else:
                        torch.nn.utils.clip_grad_value_(model.parameters(), clip)
                opt.step()
                if warmup and steps < WARMUP:  # the warm-up of Lightning's optimizer_step docs
                    for group in opt.param_groups:
                        group["lr"] = min(1.0, (steps + 1) / WARMUP) * 0.1
                steps += 1
        if scheduler is not None:
            scheduler.step()
    return flat(model)


class SchedModule(TinyModule):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return {"optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


class WarmupModule(TinyModule):
    """LR warm-up written as Lightning's documentation writes it."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        optimizer.step(closure=optimizer_closure)
        if self.trainer.global_step < WARMUP:
            for group in optimizer.param_groups:
                group["lr"] = min(1.0, (self.trainer.global_step + 1) / WARMUP) * 0.1


def trainer_loop(epochs: int, n: int = 60, bs: int = 8, drop_last: bool = False,
                 accum: int = 1, clip: float | None = None, clip_algo: str = "norm",
                 sched: bool = False, warmup: bool = False) -> torch.Tensor:
    torch.manual_seed(1234)
    dl = make_loader(make_data(n=n), batch_size=bs, drop_last=drop_last)
    module = (SchedModule if sched else WarmupModule if warmup else TinyModule)()
    trainer = Trainer(max_epochs=epochs, accumulate_grad_batches=accum, gradient_clip_val=clip,
                      gradient_clip_algorithm=clip_algo, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, dl)
    return flat(module)


SIZES = {"short_last_batch": dict(n=60), "exact_multiple": dict(n=64),
         "drop_last": dict(n=60, drop_last=True), "drop_last_exact": dict(n=64, drop_last=True)}


@pytest.mark.parametrize("size", list(SIZES))
def test_bit_identical_for_any_dataset_size(size):
    expected = hand_loop(4, **SIZES[size])
    got = trainer_loop(4, **SIZES[size])
    assert torch.equal(expected, got), (expected - got).abs().max()


@pytest.mark.parametrize(
    "accum,clip,algo",
    [(3, None, "norm"), (1, 0.05, "norm"), (3, 0.05, "norm"), (2, 0.01, "value")],
)
@pytest.mark.parametrize("n", [60, 64])
def test_bit_identical_with_accumulation_and_clipping(accum, clip, algo, n):
    expected = hand_loop(4, n=n, accum=accum, clip=clip, clip_algo=algo)
    got = trainer_loop(4, n=n, accum=accum, clip=clip, clip_algo=algo)
    assert torch.equal(expected, got), (expected - got).abs().max()


@pytest.mark.parametrize("n", [60, 64])
def test_bit_identical_with_epoch_scheduler(n):
    assert torch.equal(hand_loop(3, n=n, sched=True), trainer_loop(3, n=n, sched=True))


@pytest.mark.parametrize("n", [60, 64])
def test_optimizer_step_override_with_warmup_equals_the_hand_warmup(n):
    expected = hand_loop(3, n=n, warmup=True)
    assert torch.equal(expected, trainer_loop(3, n=n, warmup=True))
    assert not torch.equal(expected, hand_loop(3, n=n))  # the warm-up changes the weights


def test_stopping_after_len_batches_would_differ():
    """What the exhaustion fixes: a loop that stops after len(loader) batches (no trailing
    StopIteration) ends with other weights than the for loop, for an exact multiple."""
    torch.manual_seed(1234)
    dl = make_loader(make_data(n=64), batch_size=8)
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        it = iter(dl)
        for _ in range(len(dl)):
            x, y = next(it)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert not torch.equal(flat(model), hand_loop(3, n=64))
    assert torch.equal(trainer_loop(3, n=64), hand_loop(3, n=64))


def test_lbfgs_through_the_optimizer_step_closure():
    """LBFGS calls the closure several times per step: each call is training_step, zero_grad
    and backward, as in the hand loop."""

    def hand() -> torch.Tensor:
        torch.manual_seed(1234)
        dl = make_loader(make_data(n=32), batch_size=8)
        model = make_net(dropout=0.0)
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
        for _ in range(2):
            for x, y in dl:
                def closure(x=x, y=y):
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    return loss
                opt.step(closure)
        return flat(model)

    class LBFGSModule(TinyModule):
        def __init__(self):
            super().__init__(dropout=0.0)
            self.calls = 0

        def training_step(self, batch, batch_idx):
            self.calls += 1
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)

    torch.manual_seed(1234)
    dl = make_loader(make_data(n=32), batch_size=8)
    module = LBFGSModule()
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False)
    trainer.fit(module, dl)
    assert torch.equal(hand(), flat(module))
    assert module.calls > 8 and trainer.global_step == 8  # several closure calls per step


def test_differs_when_data_order_differs():
    """The comparison can fail: a different shuffle seed gives different weights."""
    a = hand_loop(2)
    ds = make_data(n=60)
    torch.manual_seed(1234)
    module = TinyModule()
    Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False).fit(module, make_loader(ds, batch_size=8, seed=99))
    assert not torch.equal(a, flat(module))
