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
