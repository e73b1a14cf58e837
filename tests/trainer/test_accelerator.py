"""trainer.accelerator: device specifics in one place (CPU here; CUDA paths need a card)."""

from __future__ import annotations

import warnings

import pytest
import torch

from trainer import Trainer
from trainer.accelerator import (
    CPUAccelerator,
    CUDAAccelerator,
    accelerator_for,
    select_accelerator,
)
from trainer.precision import Precision
from trainer.strategy import DDPStrategy, SingleDeviceStrategy


def test_auto_is_cpu_without_cuda():
    # (the trainer tests' conftest hides any GPU)
    a = select_accelerator("auto")
    assert isinstance(a, CPUAccelerator)
    assert a.device(3) == torch.device("cpu") and a.backend == "gloo"
    assert a.auto_device_count() == 1 and a.device_ids(a.device()) is None


@pytest.mark.parametrize("name, match", [("tpu", "must be 'auto', 'cpu' or 'cuda'"),
                                         ("cuda", "no CUDA device here"),
                                         ("gpu", "no CUDA device here")])
def test_refused_in_one_line(name, match):
    with pytest.raises(ValueError, match=match):
        select_accelerator(name)


def test_cuda_facts_without_a_card():
    a = accelerator_for("cuda:1")
    assert isinstance(a, CUDAAccelerator) and a.backend == "nccl"
    assert a.device(1) == torch.device("cuda", 1) and a.device_ids(a.device(1)) == [1]
    assert a.barrier_kwargs(a.device(1)) == {"device_ids": [1]}
    assert a.supports_fp16_scaler and not CPUAccelerator().supports_fp16_scaler


def test_cpu_precision_has_no_scaler_and_refuses_fp16_mixed():
    assert not Precision("bf16-mixed", CPUAccelerator()).scaler.is_enabled()
    with pytest.raises(ValueError, match="16-mixed.*CUDA"):
        Precision("16-mixed", CPUAccelerator())


def test_trainer_takes_an_accelerator_and_exposes_it():
    t = Trainer(accelerator=CPUAccelerator(), logger=False, enable_progress_bar=False)
    assert isinstance(t.accelerator, CPUAccelerator)
    assert isinstance(t.strategy, SingleDeviceStrategy) and t.strategy.accelerator == t.accelerator


def test_ddp_on_cuda_is_judged_by_its_accelerator_not_the_cpu_placeholder():
    # A DDP strategy learns its rank's device only in the worker; its precision and flags are
    # decided by the accelerator, so 16-mixed and sync_batchnorm are accepted for CUDA ranks.
    s = DDPStrategy("cuda", devices=2)
    assert s.backend == "nccl" and isinstance(s.accelerator, CUDAAccelerator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns that this machine has no CUDA
        t = Trainer(strategy=s, precision="16-mixed", sync_batchnorm=True, logger=False,
                    enable_progress_bar=False)
    assert t.precision_plugin.accelerator.name == "cuda"
    assert DDPStrategy("cpu", devices=2).backend == "gloo"
