"""The Trainer's weights equal a hand-written PyTorch loop's, bit for bit (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from core_helpers import TinyModule, flat, make_data, make_loader, make_net
from torch import nn

from trainer import Trainer


def hand_loop(epochs: int, accum: int = 1, clip: float | None = None,
              clip_algo: str = "norm", sched: bool = False) -> torch.Tensor:
    """The loop a person writes: one DataLoader with its own generator, iterated each epoch."""
    torch.manual_seed(1234)
    ds = make_data(n=60)
    dl = make_loader(ds, batch_size=8)  # 8 batches, the last one short
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if sched else None
    model.train()
    for _ in range(epochs):
        n = len(dl)
        for i, (x, y) in enumerate(dl):
            if i % accum == 0:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if accum > 1:
                loss = loss / accum
            loss.backward()
            if (i + 1) % accum == 0 or i + 1 == n:
                if clip is not None:
                    if clip_algo == "norm":
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                    else:
                        torch.nn.utils.clip_grad_value_(model.parameters(), clip)
                opt.step()
        if scheduler is not None:
            scheduler.step()
    return flat(model)


class SchedModule(TinyModule):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return {"optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def trainer_loop(epochs: int, accum: int = 1, clip: float | None = None,
                 clip_algo: str = "norm", sched: bool = False) -> torch.Tensor:
    torch.manual_seed(1234)
    ds = make_data(n=60)
    dl = make_loader(ds, batch_size=8)
    module = (SchedModule if sched else TinyModule)()
    trainer = Trainer(max_epochs=epochs, accumulate_grad_batches=accum, gradient_clip_val=clip,
                      gradient_clip_algorithm=clip_algo, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, dl)
    return flat(module)


@pytest.mark.parametrize(
    "accum,clip,algo",
    [(1, None, "norm"), (3, None, "norm"), (1, 0.05, "norm"), (3, 0.05, "norm"),
     (2, 0.01, "value")],
)
def test_bit_identical_to_hand_loop(accum, clip, algo):
    expected = hand_loop(4, accum, clip, algo)
    got = trainer_loop(4, accum, clip, algo)
    assert torch.equal(expected, got), (expected - got).abs().max()


def test_bit_identical_with_epoch_scheduler():
    assert torch.equal(hand_loop(3, sched=True), trainer_loop(3, sched=True))


def test_differs_when_data_order_differs():
    """The comparison can fail: a different shuffle seed gives different weights."""
    torch.manual_seed(1234)
    a = hand_loop(2)
    ds = make_data(n=60)
    module = TinyModule()
    torch.manual_seed(1234)
    module = TinyModule()
    Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False).fit(module, make_loader(ds, batch_size=8, seed=99))
    assert not torch.equal(a, flat(module))
