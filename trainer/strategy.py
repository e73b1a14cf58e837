"""Where the work runs: one device, or many processes in DDP.

A strategy owns the process group, wraps the model, shards the data and reduces tensors across
ranks. The Trainer talks to it through this narrow interface and never asks which one it holds.

DDP has two ways in:

* started by us: ``DDPStrategy.launcher`` is a :class:`trainer.launcher.Launcher` that starts the
  workers with torch's elastic launcher (rendezvous on 127.0.0.1) and brings rank 0's results back;
* already inside torchrun / SLURM / one of our workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
  set, or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` with ``MASTER_ADDR``/
  ``MASTER_PORT``): ``launcher`` is None and :meth:`DDPStrategy.setup_environment` joins that group.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import warnings
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from trainer.accelerator import (
    Accelerator,
    CPUAccelerator,
    accelerator_for,
    select_accelerator,
)
from trainer.environment import cluster_env, set_threads_per_rank

log = logging.getLogger(__name__)

_REDUCE_OPS = ("mean", "sum", "max", "min")


class Strategy:
    """Base: the single-process behaviour; distributed strategies override what differs."""

    launcher: Any = None  # a Launcher when worker processes must be started, else None
    accelerator: Accelerator = CPUAccelerator()  # set from the device in __init__

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.root_device = torch.device(device)
        self.accelerator: Accelerator = accelerator_for(self.root_device)

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
        batch_sampler = getattr(dataloader, "batch_sampler", None)
        inner = getattr(batch_sampler, "sampler", None)
        if inner is not sampler and hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)

    def reduce(self, tensor: Tensor, op: str = "mean") -> Tensor:
        """Reduce a tensor across ranks ('mean', 'sum', 'max', 'min'); identity here."""
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait for every rank. A single process has nobody to wait for."""

    def training_step_fn(self, module: nn.Module) -> Any:
        """What the loop calls as ``training_step``: the module's own method here."""
        return module.training_step

    def no_sync(self, module: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Skip the gradient all-reduce inside (gradient accumulation); a no-op on one device."""
        return contextlib.nullcontext()

    def gather_predictions(self, predictions: list[Any], dataloader: DataLoader) -> list[Any]:
        """Predictions of every rank, in dataset order, as batches of the loader's batch size."""
        return predictions

    def teardown(self) -> None:
        """Release what setup_environment took."""


class SingleDeviceStrategy(Strategy):
    """One process on one device (CPU or one GPU)."""


def _parse_timeout(timeout: float | timedelta | None) -> timedelta:
    if timeout is None:
        return timedelta(minutes=30)
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    else:
        seconds = float(timeout)
    if seconds <= 0:
        raise ValueError(f"DDPStrategy(timeout=...): must be > 0 seconds (got {timeout!r})")
    return timedelta(seconds=seconds)


class _TrainingStepForward(nn.Module):
    """Routes DDP's forward to the module's training_step, so gradients sync as they should
    (the user's object is wrapped, never patched)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.training_step(*args, **kwargs)


class DDPStrategy(Strategy):
    """Distributed data parallel: one process per device, the accelerator's backend between
    them (gloo on CPU, NCCL on CUDA).

    Args:
        accelerator: 'cpu', 'cuda', 'auto' or an Accelerator.
        devices: processes per node.
        num_nodes: nodes (machines); >1 is normally started by torchrun/SLURM (docs/ddp.md).
        timeout: collective timeout (seconds or timedelta): a rank stuck in a collective longer
            than this fails. The launcher ends all ranks as soon as one fails, whatever this is.
        backend: 'gloo' or 'nccl'; default from the accelerator.
        find_unused_parameters: passed to DistributedDataParallel.
        use_distributed_sampler: replace the loaders' samplers with a DistributedSampler.
        rdzv_endpoint: host:port of the c10d rendezvous when our launcher starts a multi-node job
            itself (num_nodes > 1 outside torchrun); single-node jobs pick a free loopback port.
        rdzv_id: the rendezvous run id shared by the nodes of a multi-node job.
        join_timeout: seconds the rendezvous waits for all nodes.
        threads_per_rank: CPU threads per rank (default: cores // local ranks, or OMP_NUM_THREADS).
        shutdown_timeout: seconds a rank gets to exit after SIGTERM once another rank failed.
    """

    def __init__(
        self,
        accelerator: str | Accelerator = "auto",
        devices: int = 2,
        num_nodes: int = 1,
        timeout: float | timedelta | None = None,
        backend: str | None = None,
        find_unused_parameters: bool = False,
        use_distributed_sampler: bool = True,
        *,
        rdzv_endpoint: str | None = None,
        rdzv_id: str | None = None,
        join_timeout: float = 300.0,
        threads_per_rank: int | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        accel = _ddp_accelerator(accelerator)
        if int(devices) < 1:
            raise ValueError(f"DDPStrategy(devices=...): must be >= 1 (got {devices!r})")
        if int(num_nodes) < 1:
            raise ValueError(f"DDPStrategy(num_nodes=...): must be >= 1 (got {num_nodes!r})")
        if backend is not None and backend not in ("gloo", "nccl"):
            raise ValueError(
                f"DDPStrategy(backend=...): must be 'gloo' or 'nccl' (got {backend!r})"
            )
        if backend == "nccl" and accel.backend != "nccl":
            raise ValueError(
                "DDPStrategy(backend='nccl') needs accelerator='cuda'; use 'gloo' on CPU"
            )
        super().__init__("cpu")  # the rank's own device is known in setup_environment
        self.accelerator = accel
        self.devices = int(devices)
        self.num_nodes = int(num_nodes)
        self.timeout = _parse_timeout(timeout)
        self.backend = backend or accel.backend
        self.find_unused_parameters = find_unused_parameters
        self.use_distributed_sampler = use_distributed_sampler
        self.rdzv_endpoint = rdzv_endpoint
        self.rdzv_id = rdzv_id
        self.join_timeout = float(join_timeout)
        self.threads_per_rank = threads_per_rank
        self.shutdown_timeout = float(shutdown_timeout)
        self.global_rank = 0
        self.local_rank = 0
        self.world_size = self.devices * self.num_nodes
        self.model: nn.Module | None = None  # the DistributedDataParallel wrapper, once set up
        self._launched_worker = False  # True inside a worker our launcher started
        self._owns_group = False
        self._launcher: Any = None

    # -- launching -------------------------------------------------------------------------------

    @property
    def launcher(self) -> Any:  # type: ignore[override]
        """None inside torchrun/SLURM/our workers (join that group), else our Launcher."""
        if cluster_env() is not None:
            return None
        if self._launcher is None:
            from trainer.launcher import Launcher

            self._launcher = Launcher(self)
        return self._launcher

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    # -- process group -----------------------------------------------------------------------------

    def setup_environment(self) -> None:
        """Join (or create) the process group given by the environment; idempotent."""
        env = cluster_env()
        if env is None:
            raise RuntimeError(
                "DDPStrategy.setup_environment: no RANK/WORLD_SIZE/LOCAL_RANK in the environment. "
                "Start the job through strategy.launcher.launch(...) (the Trainer does), torchrun "
                "or srun."
            )
        self.global_rank = env["rank"]
        self.world_size = env["world_size"]
        self.local_rank = env["local_rank"]
        expected = self.devices * self.num_nodes
        if not self._launched_worker and self.world_size != expected:
            raise RuntimeError(
                f"DDPStrategy(devices={self.devices}, num_nodes={self.num_nodes}) expects "
                f"{expected} processes but the environment ({env['source']}) says "
                f"WORLD_SIZE={self.world_size}: make devices x num_nodes match the launcher "
                f"(torchrun --nproc-per-node x --nnodes, or SLURM's tasks)"
            )
        if not self.accelerator.is_available():
            raise RuntimeError(f"DDPStrategy(accelerator={self.accelerator.name!r}): not "
                               "available in this process")
        self.root_device = self.accelerator.device(self.local_rank)
        self.accelerator.setup_device(self.root_device)
        if not self._launched_worker and env["source"] == "slurm":
            os.environ.setdefault("RANK", str(self.global_rank))
            os.environ.setdefault("WORLD_SIZE", str(self.world_size))
            os.environ.setdefault("LOCAL_RANK", str(self.local_rank))
        if not self._launched_worker and "OMP_NUM_THREADS" not in os.environ:
            set_threads_per_rank(env["local_world_size"], self.threads_per_rank)
        if dist.is_initialized():
            return
        kwargs = self.accelerator.init_kwargs(self.root_device) if (
            self.backend == self.accelerator.backend) else {}
        dist.init_process_group(
            backend=self.backend,
            init_method="env://",
            rank=self.global_rank,
            world_size=self.world_size,
            timeout=self.timeout,
            **kwargs,
        )
        self._owns_group = True
        if not self._launched_worker:
            atexit.register(_destroy_group_at_exit)

    def teardown(self) -> None:
        """Drop the DDP wrapper; the process group stays (see below)."""
        self.model = None
        # The group stays: in our workers the launcher's entry still needs it to hand results
        # back (and destroys it last); under torchrun/SLURM the next stage (fit, then test)
        # reuses it, and it is destroyed when the process exits.

    def _destroy_group(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    # -- model -------------------------------------------------------------------------------------

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move to the device and wrap in DistributedDataParallel (``strategy.model``).

        Returns the module itself, untouched: the loop calls ``training_step_fn(module)``,
        which goes through the wrapper's forward to ``module.training_step``, so DDP
        all-reduces the gradients in backward.
        """
        module = module.to(self.root_device)
        if not self.is_distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        if self._wraps(module):
            return module  # already wrapped (the Trainer may call this once per stage)
        if getattr(module, "training_step", None) is None:
            self.model = self._wrap(module)
        else:
            self.model = self._wrap(_TrainingStepForward(module))
        return module

    def _wraps(self, module: nn.Module) -> bool:
        inner = getattr(self.model, "module", None)
        return inner is module or getattr(inner, "module", None) is module

    def training_step_fn(self, module: nn.Module) -> Any:
        """``module.training_step`` through the DDP wrapper when this strategy wrapped it."""
        if self.model is not None and isinstance(self.model.module, _TrainingStepForward) and (
                self.model.module.module is module):
            return self.model
        return module.training_step

    def _wrap(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = self.accelerator.device_ids(self.root_device)
        return DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters
        )

    def no_sync(self, module: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Skip the gradient all-reduce inside (the micro-steps of gradient accumulation)."""
        if self.model is not None and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    # -- data --------------------------------------------------------------------------------------

    def setup_dataloader(self, dataloader: DataLoader, shuffle: bool) -> DataLoader:
        """Rebuild the loader with a DistributedSampler (rank's share of the data).

        Shuffling follows the loader (RandomSampler → shuffled) unless ``shuffle`` is False
        (evaluation never shuffles). The seed is the loader's generator seed if it has one, else
        ``TRAINFLOW_SEED``/``PL_GLOBAL_SEED`` from the environment, else 0 — the same on every rank.
        """
        if not self.use_distributed_sampler or not self.is_distributed or self.world_size == 1:
            return dataloader
        if not isinstance(dataloader, DataLoader):
            return dataloader
        if isinstance(dataloader.dataset, IterableDataset):
            warnings.warn(
                "DDPStrategy: an IterableDataset cannot be sharded by a sampler; each rank reads "
                "all of it unless the dataset shards itself (by torch.distributed.get_rank()).",
                stacklevel=2,
            )
            return dataloader
        sampler = dataloader.sampler
        if isinstance(sampler, DistributedSampler):
            return dataloader
        batch_sampler = dataloader.batch_sampler
        if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
            raise ValueError(
                "DDPStrategy: the loader uses a custom batch_sampler "
                f"({type(batch_sampler).__name__}) that cannot be sharded automatically: "
                "shard it yourself and pass use_distributed_sampler=False"
            )
        if not isinstance(sampler, RandomSampler | SequentialSampler):
            raise ValueError(
                f"DDPStrategy: the loader uses a custom sampler ({type(sampler).__name__}) that "
                "cannot be sharded automatically: shard it yourself and pass "
                "use_distributed_sampler=False"
            )
        do_shuffle = bool(shuffle) and isinstance(sampler, RandomSampler)
        seed = _sampler_seed(dataloader)
        dist_sampler = DistributedSampler(
            dataloader.dataset,
            num_replicas=self.world_size,
            rank=self.global_rank,
            shuffle=do_shuffle,
            seed=seed,
            drop_last=False,
        )
        kwargs: dict[str, Any] = {
            "batch_size": dataloader.batch_size,
            "shuffle": False,
            "sampler": dist_sampler,
            "num_workers": dataloader.num_workers,
            "collate_fn": dataloader.collate_fn,
            "pin_memory": dataloader.pin_memory,
            "drop_last": dataloader.drop_last,
            "timeout": dataloader.timeout,
            "worker_init_fn": dataloader.worker_init_fn,
            "multiprocessing_context": dataloader.multiprocessing_context,
            "generator": dataloader.generator,
            "persistent_workers": dataloader.persistent_workers,
            "pin_memory_device": dataloader.pin_memory_device,
        }
        if dataloader.num_workers > 0:
            kwargs["prefetch_factor"] = dataloader.prefetch_factor
        return type(dataloader)(dataloader.dataset, **kwargs) if type(
            dataloader
        ) is DataLoader else DataLoader(dataloader.dataset, **kwargs)

    def gather_predictions(self, predictions: list[Any], dataloader: DataLoader) -> list[Any]:
        """All ranks' predict outputs back in dataset order (sampler padding dropped).

        Each element of ``predictions`` is one batch's output: a tensor (first dim = batch), or a
        dict/list/tuple of them. Returns, on every rank, the batches a single process would have
        produced with the loader's batch size. Falls back to rank order for other outputs.
        """
        if not self.is_distributed or self.world_size == 1:
            return predictions
        sampler = getattr(dataloader, "sampler", None)
        gathered = self.all_gather_object(_to_cpu(predictions))
        if not isinstance(sampler, DistributedSampler) or sampler.shuffle:
            return [batch for rank_batches in gathered for batch in rank_batches]
        try:
            per_rank = [_concat_batches(b) for b in gathered]
        except TypeError:
            return [batch for rank_batches in gathered for batch in rank_batches]
        n = len(sampler.dataset)  # type: ignore[arg-type]
        merged = _interleave(per_rank, n)
        batch_size = dataloader.batch_size or 1
        return _split(merged, n, batch_size)

    # -- collectives -------------------------------------------------------------------------------

    def reduce(self, tensor: Tensor, op: str = "mean") -> Tensor:
        """All-reduce a copy of ``tensor`` ('mean', 'sum', 'max', 'min'); returns the result."""
        if op not in _REDUCE_OPS:
            raise ValueError(f"Strategy.reduce(op=...): must be one of {_REDUCE_OPS} (got {op!r})")
        if not self.is_distributed:
            return tensor
        if not isinstance(tensor, Tensor):
            tensor = torch.tensor(tensor)
        orig_device = tensor.device
        out = tensor.detach().clone()
        if self.backend == "nccl" and out.device.type != self.root_device.type:  # device only
            out = out.to(self.root_device)
        if op == "mean" and not out.is_floating_point():
            out = out.float()
        red = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
               "min": dist.ReduceOp.MIN}[op]
        dist.all_reduce(out, op=red)
        if op == "mean":
            out = out / self.world_size
        return out.to(orig_device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self, name: str | None = None) -> None:
        if not self.is_distributed:
            return
        if self.backend == self.accelerator.backend:
            dist.barrier(**self.accelerator.barrier_kwargs(self.root_device))
        else:
            dist.barrier()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["model"] = None  # the DDP wrapper lives in one process only
        state["_owns_group"] = False
        return state


def _destroy_group_at_exit() -> None:
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def _sampler_seed(dataloader: DataLoader) -> int:
    gen = dataloader.generator
    if gen is None and isinstance(dataloader.sampler, RandomSampler):
        gen = dataloader.sampler.generator
    if gen is not None:
        return int(gen.initial_seed()) % (2**63)
    for key in ("TRAINFLOW_SEED", "PL_GLOBAL_SEED"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_to_cpu(v) for v in obj]
        return type(obj)(items) if not hasattr(obj, "_fields") else type(obj)(*items)
    return obj


def _concat_batches(batches: list[Any]) -> Any:
    """Concatenate a rank's batch outputs along dim 0 (tensors, or dict/list/tuple of them)."""
    first = batches[0] if batches else None
    if isinstance(first, Tensor):
        return torch.cat([b.reshape(1) if b.dim() == 0 else b for b in batches])
    if isinstance(first, dict):
        return {k: _concat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(_concat_batches([b[i] for b in batches]) for i in range(len(first)))
    raise TypeError(f"cannot reorder predictions of type {type(first).__name__}")


def _interleave(per_rank: list[Any], n: int) -> Any:
    """Sample i of the dataset is sample i // world of rank i % world (DistributedSampler)."""
    first = per_rank[0]
    if isinstance(first, Tensor):
        world = len(per_rank)
        k = min(t.shape[0] for t in per_rank)
        stacked = torch.stack([t[:k] for t in per_rank], dim=1)  # [k, world, ...]
        return stacked.reshape(k * world, *first.shape[1:])[:n]
    if isinstance(first, dict):
        return {key: _interleave([r[key] for r in per_rank], n) for key in first}
    return type(first)(_interleave([r[i] for r in per_rank], n) for i in range(len(first)))


def _split(merged: Any, n: int, batch_size: int) -> list[Any]:
    out = []
    for start in range(0, n, batch_size):
        out.append(_slice(merged, start, start + batch_size))
    return out


def _slice(obj: Any, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[start:stop]
    if isinstance(obj, dict):
        return {k: _slice(v, start, stop) for k, v in obj.items()}
    return type(obj)(_slice(v, start, stop) for v in obj)


def _ddp_accelerator(accelerator: str | Accelerator) -> Accelerator:
    # (availability is checked in the worker, where the device is taken)
    if isinstance(accelerator, Accelerator):
        return accelerator
    if accelerator == "auto":
        return select_accelerator("auto")
    if accelerator not in ("cpu", "cuda"):
        raise ValueError(
            "DDPStrategy(accelerator=...): must be 'cpu', 'cuda' or 'auto' "
            f"(got {accelerator!r})"
        )
    return accelerator_for(accelerator)


def select_strategy(
    strategy: str | Strategy, accelerator: str | Accelerator, devices: int | str, num_nodes: int
) -> Strategy:
    """Turn the Trainer's flags into a Strategy: 'auto' is one device for 1, DDP otherwise.

    ``devices='auto'`` means every GPU with accelerator cuda, one process on CPU; inside
    torchrun/SLURM it means the processes per node the launcher started.
    """
    if isinstance(strategy, Strategy):
        return strategy
    accel = select_accelerator(accelerator)
    env = cluster_env()
    if devices == "auto":
        if env is not None:
            n_devices = env["local_world_size"]
            num_nodes = max(int(num_nodes), env["world_size"] // max(1, n_devices))
        else:
            n_devices = accel.auto_device_count()
    else:
        try:
            n_devices = int(devices)
        except (TypeError, ValueError):
            raise ValueError(
                f"Trainer(devices=...): must be an int >= 1 or 'auto' (got {devices!r})"
            ) from None
        if n_devices < 1:
            raise ValueError(f"Trainer(devices=...): must be >= 1 (got {devices!r})")
    if int(num_nodes) < 1:
        raise ValueError(f"Trainer(num_nodes=...): must be >= 1 (got {num_nodes!r})")
    accel.check_device_count(n_devices)
    if not isinstance(strategy, str):
        raise TypeError(
            f"Trainer(strategy=...): a name or a Strategy (got {type(strategy).__name__})"
        )
    name = strategy.lower()
    if name in ("auto", "single_device") and n_devices == 1 and num_nodes == 1:
        if env is not None and env["world_size"] > 1 and name == "auto":
            return DDPStrategy(accel, devices=1, num_nodes=env["world_size"])
        return SingleDeviceStrategy(accel.device(0))
    if name == "single_device":
        raise ValueError(
            f"Trainer(strategy='single_device') runs one process: got devices={n_devices}, "
            f"num_nodes={num_nodes}; use strategy='ddp' or devices=1"
        )
    if name in ("auto", "ddp", "ddp_spawn"):
        return DDPStrategy(accel, devices=n_devices, num_nodes=int(num_nodes))
    raise ValueError(
        f"Trainer(strategy=...): unknown strategy {strategy!r}; "
        "use 'auto', 'single_device' or 'ddp'"
    )
