"""The learning rates a callback sees, batch by batch, under Lightning 2.6 and under our Trainer,
for the scheduler settings whose counting is easy to get wrong: step-interval schedulers with a
frequency under gradient accumulation (Lightning counts the epoch's batches, stepping only at the
end of an accumulation window), epoch-interval ones with a frequency, and ReduceLROnPlateau
stepped per step (after the validation that runs on that batch) or per epoch.

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

CASES = {
    # name: (scheduler kind, lr_scheduler dict extras, Trainer flags, train samples)
    "step_freq3_accum2": ("step_lr", {"interval": "step", "frequency": 3},
                          {"accumulate_grad_batches": 2, "max_epochs": 2}, 56),
    "step_freq2_accum2_odd_epoch": ("step_lr", {"interval": "step", "frequency": 2},
                                    {"accumulate_grad_batches": 2, "max_epochs": 3}, 40),
    "epoch_freq2": ("step_lr", {"interval": "epoch", "frequency": 2},
                    {"accumulate_grad_batches": 2, "max_epochs": 5}, 24),
    "plateau_step_after_validation": ("plateau", {"interval": "step", "frequency": 2},
                                      {"val_check_interval": 2, "max_epochs": 2}, 48),
    "plateau_step_accum2_not_strict": ("plateau", {"interval": "step", "frequency": 1,
                                                   "strict": False},
                                       {"val_check_interval": 4, "accumulate_grad_batches": 2,
                                        "max_epochs": 2}, 64),
    "plateau_epoch": ("plateau", {"interval": "epoch"}, {"max_epochs": 4}, 24),
}


def _run(framework: str, case: str, tmp_path) -> list[tuple[str, int, float]]:
    kind, sched_extra, flags, n_train = CASES[case]
    lightning = framework == "lightning"
    seen: list[tuple[str, int, float]] = []

    class Module(pl.LightningModule if lightning else ours.TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            # never improves: a ReduceLROnPlateau with patience 0 halves the rate at each step
            self.log("val_loss", torch.tensor(1.0))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            if kind == "plateau":
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
                extra = {"monitor": "val_loss", **sched_extra}
            else:
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
                extra = sched_extra
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, **extra}}

    base = pl.Callback if lightning else ours.Callback

    class RecordLR(base):
        def _lr(self, trainer):
            return trainer.optimizers[0].param_groups[0]["lr"]

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(("batch_start", batch_idx, self._lr(trainer)))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(("batch_end", batch_idx, self._lr(trainer)))

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                seen.append(("val_end", trainer.global_step, self._lr(trainer)))

        def on_train_epoch_end(self, trainer, module):
            seen.append(("epoch_end", trainer.current_epoch, self._lr(trainer)))

        def on_train_end(self, trainer, module):
            seen.append(("train_end", trainer.global_step, self._lr(trainer)))

    kw = dict(default_root_dir=tmp_path / framework, enable_progress_bar=False, logger=False,
              enable_checkpointing=False, accelerator="cpu", devices=1, callbacks=[RecordLR()],
              num_sanity_val_steps=0, **flags)
    t = pl.Trainer(enable_model_summary=False, **kw) if lightning else ours.Trainer(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Lightning's notes on workers, strict=False skips)
        t.fit(Module(), make_loader(make_data(n=n_train), batch_size=8),
              make_loader(make_data(n=16), batch_size=8, shuffle=False))
    return seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_learning_rates_follow_lightning(case, tmp_path):
    expected = _run("lightning", case, tmp_path)
    assert len({lr for *_, lr in expected}) > 2  # the schedule did something to compare
    assert _run("ours", case, tmp_path) == expected
