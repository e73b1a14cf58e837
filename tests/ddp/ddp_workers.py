"""Module-level worker functions for the DDP tests (spawned workers import them by name)."""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist


def rank_info(tag: str) -> dict:
    """Each rank reports who it is; also sums ranks with an all-reduce."""
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return {
        "tag": tag,
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "rank_sum": float(t.item()),
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


def raise_at_step(bad_rank: int, step: int) -> str:
    """All ranks all-reduce in a loop; ``bad_rank`` raises at ``step``."""
    for i in range(100):
        if dist.get_rank() == bad_rank and i == step:
            raise ValueError(f"injected failure at step {i}")
        t = torch.ones(1)
        dist.all_reduce(t)
        time.sleep(0.05)
    return "finished"


def killed_at_step(bad_rank: int, step: int) -> str:
    """``bad_rank`` kills itself with SIGKILL at ``step``."""
    for i in range(100):
        if dist.get_rank() == bad_rank and i == step:
            os.kill(os.getpid(), signal.SIGKILL)
        t = torch.ones(1)
        dist.all_reduce(t)
        time.sleep(0.05)
    return "finished"


def _inodes_of(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in _children(p):
            out.append(c)
            todo.append(c)
    return out


def _decode_addr(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0))
    else:  # IPv6: four little-endian 32-bit words
        words = [host[i : i + 8] for i in range(0, 32, 8)]
        raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
        import ipaddress

        ip = str(ipaddress.IPv6Address(raw))
    return ip, int(port, 16)


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP socket owned by ``pids`` (/proc/net/tcp*)."""
    owner = {}
    for pid in pids:
        for inode in _inodes_of(pid):
            owner[inode] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and inode in owner:  # 0A = LISTEN
                ip, port = _decode_addr(local)
                found.append((ip, port, owner[inode]))
    return found


def rank_info_and_sockets(tag: str) -> dict:
    """rank_info, plus (on rank 0, every rank still in the group) the job's listening sockets."""
    info = rank_info(tag)
    dist.barrier()
    if dist.get_rank() == 0:
        agent = os.getppid()
        info["sockets"] = listening_sockets([agent, *descendants(agent)])
    dist.barrier()
    return info


def append_line(path: str, text: str) -> int:
    """Each rank appends a line to ``path`` (to count who ran); returns the rank."""
    with open(path, "a") as f:
        f.write(f"{text} rank={dist.get_rank()}\n")
    dist.barrier()
    return dist.get_rank()


# ---------------------------------------------------------------------------------------------
# Trainer-level pieces (module level so the spawned workers can unpickle them)

from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from trainer import TrainModule  # noqa: E402
from trainer.callbacks import Callback  # noqa: E402


def make_data(n: int = 64, d_in: int = 8, n_cls: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, n_cls, (n,), generator=g)
    return TensorDataset(x, y)


class MLPModule(TrainModule):
    """No dropout (so 2 ranks x B equals 1 process x 2B exactly); logs synced and local values."""

    def __init__(self, d_in: int = 8, hidden: int = 16, n_cls: int = 3, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_cls))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        rank = float(self.trainer.global_rank)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank_synced", rank, on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank_local", rank, on_step=False, on_epoch=True)
        self.log("rank_max", rank, on_step=True, on_epoch=False, sync_dist=True, reduce_fx="max")
        return loss

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class SaveThenDie(Callback):
    """Saves a checkpoint after ``save_at`` steps; rank ``rank`` SIGKILLs itself at ``die_at``."""

    def __init__(self, path: str, save_at: int, die_at: int, rank: int = 1) -> None:
        self.path, self.save_at, self.die_at, self.rank = path, save_at, die_at, rank

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.die_at and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveMidWindowThenDie(Callback):
    """Saves a checkpoint after batch ``batch_idx`` of epoch ``epoch`` (inside a gradient
    accumulation window); rank 1 SIGKILLs itself at the start of the next batch."""

    def __init__(self, path: str, epoch: int, batch_idx: int) -> None:
        self.path, self.epoch, self.batch_idx = path, epoch, batch_idx

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if (trainer.current_epoch == self.epoch and batch_idx == self.batch_idx + 1
                and trainer.global_rank == 1):
            os.kill(os.getpid(), signal.SIGKILL)


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


class DDPOrderSampler(torch.utils.data.Sampler):
    """For one process: the samples of each step of ``world`` DDP ranks, rank after rank.

    Reproduces DistributedSampler(shuffle=True, seed) — the permutation of ``seed + epoch``,
    rank r taking every world-th index from r — so that one process with batch world*B sees at
    each step exactly the union of what the ranks see with batch B.
    """

    def __init__(self, n: int, world: int, per_rank_batch: int, seed: int) -> None:
        self.n, self.world, self.b, self.seed, self.epoch = n, world, per_rank_batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        shards = [perm[r :: self.world] for r in range(self.world)]
        for k in range(0, len(shards[0]), self.b):
            for shard in shards:
                yield from shard[k : k + self.b]

    def __len__(self) -> int:
        return self.n


def _counting_allreduce(state: dict, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state["calls"] += 1
    return allreduce_hook(None, bucket)


class CountGradAllReduce(Callback):
    """Counts DDP's gradient all-reduces (a comm hook); rank 0 writes the count to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = {"calls": 0}

    def on_train_start(self, trainer, module) -> None:
        trainer.strategy.model.register_comm_hook(self.state, _counting_allreduce)

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                f.write(str(self.state["calls"]))


class DropoutMLP(MLPModule):
    """MLPModule with dropout: its masks come from each worker's global RNG."""

    def __init__(self, d_in: int = 8, hidden: int = 16, n_cls: int = 3, lr: float = 0.1) -> None:
        super().__init__(d_in, hidden, n_cls, lr)
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(hidden, n_cls))
