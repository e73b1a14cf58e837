"""A small stand-in for the Trainer, for unit tests of the callbacks' own logic.

It carries exactly the attributes the contract says callbacks read (contracts.md, "What callbacks
read on the Trainer"); end-to-end behaviour is tested against the real Trainer in test_e2e_*.py.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from trainer.checkpoint import save_checkpoint
from trainer.strategy import SingleDeviceStrategy


class StubTrainer:
    def __init__(self, root: str, loggers: list[Any] | None = None) -> None:
        self.current_epoch = 0
        self.global_step = 0
        self.max_epochs = 10
        self.max_steps = -1
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self.sanity_checking = False
        self.training = True
        self.is_global_zero = True
        self.default_root_dir = root
        self.loggers = loggers or []
        self.logger = self.loggers[0] if self.loggers else None
        self.strategy = SingleDeviceStrategy()
        self.num_training_batches = 10
        self.num_val_batches = [2]
        self.check_val_every_n_epoch = 1
        self.val_check_interval = 1.0
        self.log_every_n_steps = 1
        self.should_stop = False
        self.optimizers: list[Any] = []
        self.lr_scheduler_configs: list[Any] = []
        self.saved: list[str] = []

    def save_checkpoint(self, path: str) -> None:
        save_checkpoint({"state_dict": {}, "global_step": self.global_step}, path)
        self.saved.append(os.path.basename(path))


@pytest.fixture
def stub(tmp_path):
    def make(**kw: Any) -> StubTrainer:
        return StubTrainer(str(tmp_path), **kw)

    return make
