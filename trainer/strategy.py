"""Where the work runs: one device, or many processes in DDP.

A strategy owns the process group, wraps the model, shards the data and reduces tensors across
ranks. The Trainer talks to it through this narrow interface and never asks which one it holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


class Strategy:
    """Base: the single-process behaviour; distributed strategies override what differs."""

    launcher: Any = None  # a Launcher when worker processes must be started, else None

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.root_device = torch.device(device)

    global_rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def setup_environment(self) -> None:
        """Prepare the process (process group, device selection). Nothing to do on one device."""

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move the module to the device (and wrap it, in DDP); returns what the loop calls."""
        return module.to(self.root_device)

    def setup_dataloader(self, dataloader: DataLoader, shuffle: bool) -> DataLoader:
        """Shard the data across ranks. A single device keeps the loader as it is."""
        return dataloader

    def set_epoch(self, dataloader: DataLoader, epoch: int) -> None:
        """Tell a distributed sampler which epoch it is, so each epoch shuffles anew."""
        sampler = getattr(dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def reduce(self, tensor: Tensor, op: str = "mean") -> Tensor:
        """Reduce a tensor across ranks ('mean', 'sum', 'max', 'min'); identity here."""
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait for every rank. A single process has nobody to wait for."""

    def teardown(self) -> None:
        """Release what setup_environment took."""


class SingleDeviceStrategy(Strategy):
    """One process on one device (CPU or one GPU)."""


def select_strategy(
    strategy: str | Strategy, accelerator: str, devices: int | str, num_nodes: int
) -> Strategy:
    """Turn the Trainer's flags into a Strategy: 'auto' is one device for 1, DDP otherwise."""
    if isinstance(strategy, Strategy):
        return strategy
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    n_devices = 1 if devices == "auto" else int(devices)
    if strategy in ("auto", "single_device") and n_devices == 1 and num_nodes == 1:
        return SingleDeviceStrategy("cuda:0" if accelerator == "cuda" else "cpu")
    raise NotImplementedError(f"strategy={strategy!r} with devices={devices!r} is not built yet")
