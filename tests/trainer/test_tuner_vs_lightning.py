"""Tuner.lr_find, Tuner.scale_batch_size and trainer.estimated_stepping_batches outside fit,
against Lightning 2.6.

lr_find runs in the Trainer's own fit loop in Lightning: its max_epochs and validation schedule
hold, and validation runs (up to num_training batches); its rates, smoothed losses, early stop
and suggestion are Lightning's. scale_batch_size tries the sizes Lightning tries and returns
what it returns. estimated_stepping_batches read outside
fit loads the attached module's training data, as Lightning does.

Needs the optional extra ``compare`` (pytorch-lightning); skipped without it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from core_helpers import make_data, make_loader, make_net
from torch import nn

import trainer as ours

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.tuner import Tuner as PLTuner  # noqa: E402


def _module(lightning: bool, counts: dict[str, int]):
    class Module(pl.LightningModule if lightning else ours.TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)

        def training_step(self, batch, batch_idx):
            counts["train"] += 1
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            counts["val"] += 1
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def train_dataloader(self):
            return make_loader(make_data(n=40), batch_size=8)  # 5 batches

        def val_dataloader(self):
            return make_loader(make_data(n=16), batch_size=8, shuffle=False)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


def _trainer(lightning: bool, tmp_path, **flags):
    kw = dict(default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
              enable_checkpointing=False, accelerator="cpu", devices=1, **flags)
    return pl.Trainer(enable_model_summary=False, **kw) if lightning else ours.Trainer(**kw)


@pytest.mark.parametrize("flags", [dict(max_epochs=5), dict(max_epochs=2),
                                   dict(max_epochs=5, val_check_interval=2)])
def test_lr_find_runs_what_lightning_runs(flags, tmp_path):
    seen = {}
    for lightning in (True, False):
        counts = {"train": 0, "val": 0}
        t = _trainer(lightning, tmp_path / str(lightning), **flags)
        tuner = PLTuner(t) if lightning else ours.Tuner(t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finder = tuner.lr_find(_module(lightning, counts), num_training=12,
                                   early_stop_threshold=None, update_attr=False)
        seen[lightning] = (counts, len(finder.results["lr"]))
    assert seen[False] == seen[True]
    assert seen[True][0]["val"] > 0


def _sweep_module(lightning: bool):
    """A seeded classifier without dropout on an unshuffled loader: the same steps in both.
    (Shuffled, epoch 2 on would differ: on a dataset that is a multiple of the batch size our
    epochs draw the order as a plain ``for`` loop does, Lightning's do not; test_equivalence.)"""
    class Module(pl.LightningModule if lightning else ours.TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)
            self.lr = 0.01

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def train_dataloader(self):
            return make_loader(make_data(n=40), batch_size=8, shuffle=False)  # 5 batches

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    return Module()


@pytest.mark.parametrize("kw, flags", [
    (dict(min_lr=1e-4, max_lr=50.0), {}),  # diverges: stops at the 4x threshold
    (dict(min_lr=1e-3, max_lr=2.0, mode="linear"), {}),
    (dict(min_lr=1e-4, max_lr=1.0, early_stop_threshold=None), dict(accumulate_grad_batches=2)),
])
def test_lr_find_gives_lightnings_curve_and_suggestion(kw, flags, tmp_path):
    """Same rates, same smoothed losses (Lightning's first point is loss / (1 + beta)), same
    early stop, same suggestion, set on the module by update_attr."""
    seen = {}
    for lightning in (True, False):
        t = _trainer(lightning, tmp_path / str(lightning), max_epochs=20, **flags)
        tuner = PLTuner(t) if lightning else ours.Tuner(t)
        m = _sweep_module(lightning)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finder = tuner.lr_find(m, num_training=40, **kw)
        seen[lightning] = (finder.results["lr"], finder.results["loss"], finder.suggestion(),
                           finder._optimal_idx, m.lr)
    (pl_lr, pl_loss, pl_sugg, pl_idx, pl_attr) = seen[True]
    lr, loss, sugg, idx, attr = seen[False]
    assert len(lr) == len(pl_lr) == len(loss) == len(pl_loss) > 11
    assert lr == pytest.approx(pl_lr, rel=1e-12)
    assert loss == pytest.approx(pl_loss, rel=1e-5)
    assert (idx, sugg) == (pl_idx, pl_sugg) and sugg is not None
    assert attr == pl_attr == sugg
    if kw.get("max_lr") == 50.0:
        assert len(lr) < 40  # the early stop was exercised (and at the same point)


def test_estimated_stepping_batches_outside_fit(tmp_path):
    seen = {}
    for lightning in (True, False):
        counts = {"train": 0, "val": 0}
        t = _trainer(lightning, tmp_path / str(lightning), max_epochs=3,
                     accumulate_grad_batches=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.validate(_module(lightning, counts), verbose=False)
        seen[lightning] = t.estimated_stepping_batches  # the module's train_dataloader()
    assert seen[False] == seen[True] == 3 * 3


def test_estimated_stepping_batches_with_nothing_attached_is_refused_in_one_line():
    t = ours.Trainer(max_epochs=2, logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="estimated_stepping_batches: no module"):
        _ = t.estimated_stepping_batches


def _sized_module(lightning: bool, batch_size: int, n: int, oom_above: int | None):
    """Reads self.batch_size in train_dataloader; 'runs out of memory' above ``oom_above``."""
    class Module(pl.LightningModule if lightning else ours.TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)
            self.batch_size = batch_size
            self.tried: list[int] = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 0 and self.global_step == 0:  # a trial's first batch
                self.tried.append(len(batch[0]))
            if oom_above is not None and len(batch[0]) > oom_above:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def train_dataloader(self):
            return make_loader(make_data(n=n), batch_size=self.batch_size, shuffle=False)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


@pytest.mark.parametrize("module, kw", [
    (dict(batch_size=1, n=64, oom_above=6), dict(mode="power")),
    (dict(batch_size=1, n=64, oom_above=6), dict(mode="binsearch")),  # 6 less the margin: 5
    (dict(batch_size=1, n=40, oom_above=None), dict(mode="power", max_val=24)),  # 32 not tried
    (dict(batch_size=1, n=40, oom_above=None), dict(mode="power")),  # past the dataset: 64
    (dict(batch_size=8, n=64, oom_above=1), dict(mode="power", init_val=8)),  # halves on
])
def test_scale_batch_size_gives_lightnings_size(module, kw, tmp_path):
    """Same sizes tried, same result, same attribute afterwards, quirks included; except the
    first trial: Lightning's runs on the loader fit built before the tuner set init_val (the
    module's own batch_size, here 1 or 64, counted as init_val), ours at init_val."""
    seen = {}
    for lightning in (True, False):
        t = _trainer(lightning, tmp_path / str(lightning), max_epochs=3)
        tuner = PLTuner(t) if lightning else ours.Tuner(t)
        m = _sized_module(lightning, **module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = tuner.scale_batch_size(m, steps_per_trial=1, **kw)
        seen[lightning] = (found, m.batch_size, m.tried[1:])
        first = m.tried[0]
    assert seen[False] == seen[True]
    assert first == min(kw.get("init_val", 2), module["n"]) or module["batch_size"] >= module["n"]
