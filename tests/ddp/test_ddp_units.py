"""Strategy pieces that need no worker processes: flag parsing, environments, sampler, ordering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from trainer.strategy import (
    DDPStrategy,
    SingleDeviceStrategy,
    _concat_batches,
    _interleave,
    _split,
    cluster_env,
    select_strategy,
)

CLUSTER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                "TORCHELASTIC_RUN_ID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in CLUSTER_VARS:
        monkeypatch.delenv(key, raising=False)


def test_select_strategy() -> None:
    assert isinstance(select_strategy("auto", "cpu", 1, 1), SingleDeviceStrategy)
    ddp = select_strategy("auto", "cpu", 2, 1)
    assert isinstance(ddp, DDPStrategy) and ddp.backend == "gloo" and ddp.world_size == 2
    assert ddp.launcher is not None  # outside torchrun: we start the workers
    assert isinstance(select_strategy("ddp", "cpu", 1, 1), DDPStrategy)
    mine = DDPStrategy("cpu", devices=3)
    assert select_strategy(mine, "cpu", 1, 1) is mine
    with pytest.raises(ValueError, match="unknown strategy 'fsdp'"):
        select_strategy("fsdp", "cpu", 2, 1)
    with pytest.raises(ValueError, match="devices"):
        select_strategy("auto", "cpu", 0, 1)
    with pytest.raises(ValueError, match="single_device"):
        select_strategy("single_device", "cpu", 2, 1)
    with pytest.raises(ValueError, match="timeout"):
        DDPStrategy("cpu", timeout=0)
    with pytest.raises(ValueError, match="nccl"):
        DDPStrategy("cpu", backend="nccl")


def test_torchrun_and_slurm_environments_are_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    env = cluster_env()
    assert env is not None and env["rank"] == 3 and env["local_world_size"] == 2
    strategy = select_strategy("auto", "cpu", "auto", 1)  # devices from torchrun
    assert isinstance(strategy, DDPStrategy)
    assert (strategy.devices, strategy.num_nodes) == (2, 2)
    assert strategy.launcher is None  # join, start nothing
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert cluster_env() is None  # SLURM without MASTER_ADDR/PORT is not a DDP job
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    env = cluster_env()
    assert env is not None and env["source"] == "slurm" and env["world_size"] == 2
    assert DDPStrategy("cpu", devices=1, num_nodes=2).launcher is None


def test_world_size_mismatch_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RuntimeError, match="expects 2 processes.*WORLD_SIZE=4"):
        DDPStrategy("cpu", devices=2).setup_environment()


class EveryOther(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(0, self.n, 2))

    def __len__(self) -> int:
        return (self.n + 1) // 2


@pytest.fixture
def group(tmp_path: Path) -> Iterator[None]:
    """A one-process gloo group through a file store (no sockets to other processes)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_distributed_sampler_keeps_the_loader_semantics(group: None) -> None:
    ds = TensorDataset(torch.arange(10.0))
    strategy = DDPStrategy("cpu", devices=2)
    strategy.world_size, strategy.global_rank = 2, 1  # as rank 1 of 2 would see it

    shuffled = DataLoader(ds, batch_size=3, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(5))
    out = strategy.setup_dataloader(shuffled, shuffle=True)
    sampler = out.sampler
    assert isinstance(sampler, DistributedSampler)
    assert sampler.shuffle and sampler.seed == 5 and sampler.rank == 1
    assert sampler.num_replicas == 2
    assert out.batch_size == 3 and out.drop_last
    strategy.set_epoch(out, 4)
    assert sampler.epoch == 4
    epoch4 = list(sampler)
    assert len([int(v) for (b,) in out for v in b]) == 3  # 5 for this rank, batch 3, drop_last
    strategy.set_epoch(out, 5)
    assert list(sampler) != epoch4  # a new permutation every epoch

    # evaluation never shuffles, and a sequential loader stays sequential
    assert not strategy.setup_dataloader(shuffled, shuffle=False).sampler.shuffle
    seq = strategy.setup_dataloader(DataLoader(ds, batch_size=2), shuffle=True)
    assert [int(v) for (b,) in seq for v in b] == [1, 3, 5, 7, 9]

    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        strategy.setup_dataloader(DataLoader(ds, sampler=EveryOther(10)), shuffle=True)
    off = DDPStrategy("cpu", devices=2, use_distributed_sampler=False)
    loader = DataLoader(ds, sampler=EveryOther(10))
    assert off.setup_dataloader(loader, shuffle=True) is loader


def test_collectives_on_a_one_process_group(group: None) -> None:
    strategy = DDPStrategy("cpu", devices=1)
    assert strategy.reduce(torch.tensor(3), "mean").item() == 3.0
    assert strategy.reduce(torch.tensor([2.0]), "max").item() == 2.0
    assert strategy.all_gather_object({"a": 1}) == [{"a": 1}]
    assert strategy.broadcast_object("x") == "x"
    strategy.barrier()
    with pytest.raises(ValueError, match="op"):
        strategy.reduce(torch.tensor(1.0), "median")


def test_prediction_order_helpers_undo_the_sampler() -> None:
    n, world, batch = 11, 2, 3
    # what DistributedSampler(shuffle=False) gives each rank (padded with index 0)
    padded = list(range(n)) + [0]
    per_rank_batches = []
    for r in range(world):
        idx = padded[r::world]
        per_rank_batches.append([{"i": torch.tensor(idx[k:k + batch])}
                                 for k in range(0, len(idx), batch)])
    merged = _interleave([_concat_batches(b) for b in per_rank_batches], n)
    out = _split(merged, n, batch)
    assert [b["i"].tolist() for b in out] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
