"""Device specifics, one class per kind of device: what ``devices='auto'`` means, which device a
rank takes (and ``set_device``), the collective backend, the device's RNG state, autocast and
whether a loss scaler applies.

Lightning Fabric's shape (``fabric/accelerators/``): the strategy, the precision plugin, the
checkpoint's RNG states and the profiler ask the accelerator instead of testing for 'cuda'
themselves, so a new kind of device is one class here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = [
    "Accelerator",
    "CPUAccelerator",
    "CUDAAccelerator",
    "select_accelerator",
    "accelerator_for",
    "cuda_rng_state",
    "set_cuda_rng_state",
]


class Accelerator:
    """The interface; the CPU behaviour is the default (nothing to select, nothing to set)."""

    name = "cpu"
    backend = "gloo"  # torch.distributed backend its ranks talk over
    supports_fp16_scaler = False  # 16-mixed (float16 autocast + GradScaler) works here
    supports_sync_batchnorm = False  # torch's SyncBatchNorm runs on this device

    @staticmethod
    def is_available() -> bool:
        return True

    def auto_device_count(self) -> int:
        """What ``devices='auto'`` means outside torchrun/SLURM."""
        return 1

    def check_device_count(self, n: int) -> None:
        """Raise, naming the flag, when ``devices=n`` cannot be honoured here."""

    def device(self, local_rank: int = 0) -> torch.device:
        """The device of the rank with this local rank."""
        return torch.device("cpu")

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` the process's current one (CUDA's set_device); nothing on CPU."""

    def device_ids(self, device: torch.device) -> list[int] | None:
        """DistributedDataParallel's ``device_ids`` for a rank on ``device``."""
        return None

    def barrier_kwargs(self, device: torch.device) -> dict[str, Any]:
        """Extra arguments of ``dist.barrier`` on this backend."""
        return {}

    def init_kwargs(self, device: torch.device) -> dict[str, Any]:
        """Extra arguments of ``dist.init_process_group`` on this backend."""
        return {}

    def autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Mixed precision in ``dtype`` for the ops run on this device."""
        return torch.autocast(self.name, dtype=dtype)

    def grad_scaler(self, precision: str) -> torch.amp.GradScaler:
        """Always a GradScaler, enabled only where it applies (16-mixed on a device that
        supports it): a disabled one passes losses and steps through unchanged."""
        enabled = precision == "16-mixed" and self.supports_fp16_scaler
        return torch.amp.GradScaler(self.name if enabled else "cpu", enabled=enabled)

    def profiler_activities(self) -> list[Any]:
        return [torch.profiler.ProfilerActivity.CPU]

    def empty_cache(self) -> None:
        """Release cached device memory (after an out-of-memory trial)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class CPUAccelerator(Accelerator):
    """The host's cores: one process, gloo between ranks, no loss scaling."""


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs: rank ``local_rank`` takes ``cuda:local_rank``, NCCL between ranks."""

    name = "cuda"
    backend = "nccl"
    supports_fp16_scaler = True
    supports_sync_batchnorm = True

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    def auto_device_count(self) -> int:
        return torch.cuda.device_count()

    def check_device_count(self, n: int) -> None:
        if n > torch.cuda.device_count():
            raise ValueError(
                f"Trainer(devices={n}): only {torch.cuda.device_count()} CUDA device(s) here")

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cuda", local_rank)

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    def device_ids(self, device: torch.device) -> list[int] | None:
        return [device.index]

    def barrier_kwargs(self, device: torch.device) -> dict[str, Any]:
        return {"device_ids": [device.index]}

    def init_kwargs(self, device: torch.device) -> dict[str, Any]:
        return {"device_id": device}  # binds the NCCL communicator to the rank's device

    def profiler_activities(self) -> list[Any]:
        return [*super().profiler_activities(), torch.profiler.ProfilerActivity.CUDA]

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()


_ACCELERATORS: dict[str, type[Accelerator]] = {"cpu": CPUAccelerator, "cuda": CUDAAccelerator,
                                               "gpu": CUDAAccelerator}


def select_accelerator(accelerator: str | Accelerator, flag: str = "Trainer") -> Accelerator:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda'/'gpu' or an Accelerator; refuses,
    naming ``flag``, a name it does not know or a device this machine lacks."""
    if isinstance(accelerator, Accelerator):
        return accelerator
    if accelerator == "auto":
        return CUDAAccelerator() if CUDAAccelerator.is_available() else CPUAccelerator()
    cls = _ACCELERATORS.get(accelerator) if isinstance(accelerator, str) else None
    if cls is None:
        raise ValueError(f"{flag}(accelerator=...): must be 'auto', 'cpu' or 'cuda' "
                         f"(got {accelerator!r})")
    if not cls.is_available():
        raise ValueError(f"{flag}(accelerator={accelerator!r}): no CUDA device here; use 'cpu' "
                         "or 'auto'")
    return cls()


def accelerator_for(device: torch.device | str) -> Accelerator:
    """The accelerator of a device ('cpu', 'cuda:1', ...)."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: only 'cpu' and 'cuda' devices are supported")
    return _ACCELERATORS[kind]()


# The checkpoint's RNG states hold every CUDA device's generator whatever the fit ran on (a
# module may draw on the GPU inside a CPU fit); reading them would initialize CUDA, so only an
# initialized one is read.
def cuda_rng_state() -> list[torch.Tensor] | None:
    """Every CUDA device's RNG state, or None where CUDA was never initialized."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.get_rng_state_all()
    return None


def set_cuda_rng_state(states: list[torch.Tensor]) -> None:
    """Inverse of cuda_rng_state (ignored on a machine without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states])
