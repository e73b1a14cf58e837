"""Start DDP workers with torch's elastic launcher and hand rank 0's results back to the caller.

``Launcher(strategy).launch(function, *args, trainer=trainer)`` runs ``function(*args)`` in
``devices`` worker processes (spawn start method, so it works from inside a Prefect task or a
notebook-free script without re-running the caller's code), then, in the caller:

* returns rank 0's return value (tensors moved to CPU);
* when a ``trainer`` is given, restores into it and its module what rank 0 ended with: the module's
  weights, the callbacks' state (ModelCheckpoint's best_model_path ...), ``callback_metrics``,
  ``logged_metrics``, ``current_epoch``, ``global_step``.

Single-node jobs rendezvous on 127.0.0.1 only: the elastic agent's TCP store and the store the
workers bootstrap from are opened on sockets we bind to the loopback address ourselves (torch's
own c10d rendezvous binds every interface), and gloo/NCCL are told to use the loopback interface.
The port comes from binding port 0, so there is no race for a "free" port.

A failing rank (exception or signal) ends the job: the agent stops the other ranks (SIGTERM, then
SIGKILL after ``shutdown_timeout``), and the caller gets :class:`WorkerError` naming the rank and
carrying the original traceback text. Workers also exit on their own if the caller dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from trainer.environment import set_threads_per_rank
from trainer.fileio import atomic_write_text

if TYPE_CHECKING:
    from trainer.strategy import DDPStrategy

log = logging.getLogger(__name__)

_BACKEND = "trainflow-loopback"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_PENDING_FDS: dict[str, int] = {}  # run_id -> pre-bound listening fd, taken by the handler
_registered = False
_register_lock = threading.Lock()


class WorkerError(RuntimeError):
    """A DDP worker failed; names the rank, carries the worker's traceback text.

    Attributes: ``rank`` (global rank of the root cause), ``exc_type`` (name of the exception
    class raised there, or ``"Signal"``), ``worker_traceback`` (text), ``failures`` (every failed
    rank -> short description).
    """

    def __init__(
        self,
        message: str,
        rank: int,
        exc_type: str,
        worker_traceback: str,
        failures: dict[int, str],
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.exc_type = exc_type
        self.worker_traceback = worker_traceback
        self.failures = failures


# ---------------------------------------------------------------------------------------------
# a c10d rendezvous whose stores listen on loopback only


def _loopback_ifname() -> str | None:
    """Name of the loopback interface ('lo' on Linux, 'lo0' on macOS)."""
    with contextlib.suppress(OSError):
        for _, name in socket.if_nameindex():
            if name in ("lo", "lo0"):
                return name
    return None


def _bind(host: str, port: int) -> socket.socket | None:
    """A TCP socket bound to host:port, or None if that address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    sock.set_inheritable(False)
    return sock


def _loopback_store_server(host: str, port: int, fd: int | None = None) -> Any:
    """A TCPStore server listening on ``host`` only (a socket we bound ourselves)."""
    from torch.distributed import TCPStore

    if fd is None:
        sock = _bind(host, port)
        if sock is None:
            raise OSError(f"DDP launcher: cannot bind {host}:{port} for the TCP store")
        fd = sock.detach()
    return TCPStore(
        host,
        port,
        is_master=True,
        timeout=timedelta(seconds=60),
        wait_for_workers=False,
        master_listen_fd=fd,
        use_libuv=False,
    )


@functools.cache
def _loopback_handler_class() -> type:
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler

    class LoopbackRendezvousHandler(DynamicRendezvousHandler):
        """torch's dynamic c10d rendezvous, with the workers' bootstrap store on loopback."""

        def get_backend(self) -> str:
            return _BACKEND

        def _create_tcp_store_server(self, master_addr: str, master_port: int) -> Any:
            sock = _bind(master_addr, 0)
            if sock is None:
                raise OSError(f"DDP launcher: cannot bind {master_addr}:0 for the worker store")
            port = sock.getsockname()[1]
            return _loopback_store_server(master_addr, port, sock.detach())

    return LoopbackRendezvousHandler


def _create_loopback_handler(params: Any) -> Any:
    """Rendezvous handler factory registered as ``trainflow-loopback``."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import (
        C10dRendezvousBackend,
    )
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
        RendezvousTimeout,
    )
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=29400)
    fd = _PENDING_FDS.pop(params.run_id, None)
    if fd is None:  # multi-agent on this machine: the first to bind hosts, the others join
        sock = _bind(host, port)
        fd = sock.detach() if sock is not None else None
    read_timeout = timedelta(seconds=int(params.get_as_int("read_timeout", 60) or 60))
    if fd is not None:
        store = _loopback_store_server(host, port, fd)
    else:
        store = TCPStore(host, port, is_master=False, timeout=read_timeout)
    backend = C10dRendezvousBackend(store, params.run_id)

    def seconds(key: str, default: float) -> timedelta:
        value = params.get(f"{key}_timeout", None) if key != "join" else params.get("timeout")
        return timedelta(seconds=float(value if value is not None else default))

    timeout = RendezvousTimeout(
        seconds("join", 600), seconds("last_call", 1), seconds("close", 30),
        seconds("heartbeat", 5),
    )
    return _loopback_handler_class().from_backend(
        params.run_id,
        store,
        backend,
        params.min_nodes,
        params.max_nodes,
        params.local_addr,
        timeout,
        keep_alive_interval=int(params.get_as_int("keep_alive_interval", 5) or 5),
        keep_alive_max_attempt=int(params.get_as_int("keep_alive_max_attempt", 3) or 3),
    )


def _register_backend() -> None:
    global _registered
    with _register_lock:
        if _registered:
            return
        from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

        rendezvous_handler_registry.register(_BACKEND, _create_loopback_handler)
        _registered = True


# ---------------------------------------------------------------------------------------------
# the caller's side


def _check_main_importable() -> None:
    """Refuse before starting anything when spawned workers could not re-import ``__main__``.

    spawn runs the caller's main file again (as ``__mp_main__``) in each worker; when that file
    does not exist (a script piped to ``python -``) every worker dies before our entry point runs,
    and torch's elastic agent was seen waiting on them for good instead of failing.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return  # `python -m pkg.mod`: workers import it by name
    path = getattr(main, "__file__", None)
    if path is not None and not os.path.isfile(path):
        raise RuntimeError(
            f"DDP launcher: the workers must re-import your main script, but it is {path!r}, "
            "not a file; save the code to a .py file and run that (or use torchrun)"
        )


class Launcher:
    """Starts ``strategy.devices`` workers per node with torch's elastic launcher."""

    def __init__(self, strategy: DDPStrategy) -> None:
        self.strategy = strategy

    @property
    def is_interactive_compatible(self) -> bool:
        return True  # spawn: the workers import the function, they do not re-run the caller

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on every rank; return rank 0's result here."""
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        strategy = self.strategy
        _check_main_importable()
        payload = _dumps((function, args, kwargs, trainer, strategy))
        run_id = strategy.rdzv_id or os.environ.get("TRAINFLOW_RDZV_ID") or uuid.uuid4().hex
        endpoint, backend, local_addr, loopback = self._rendezvous(run_id)
        workdir = tempfile.mkdtemp(prefix="trainflow-ddp-")
        opts = {
            "parent_pid": os.getpid(),
            "error_dir": workdir,
            "loopback": loopback,
            "threads": strategy.threads_per_rank,
            "nproc": strategy.devices,
            # the caller's seed (torch.manual_seed(config seed) sets it): each rank derives its own
            "seed": torch.initial_seed(),
        }
        extra: dict[str, Any] = {}
        if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:
            extra["shutdown_timeout"] = max(1, int(round(strategy.shutdown_timeout)))
        config = LaunchConfig(
            min_nodes=strategy.num_nodes,
            max_nodes=strategy.num_nodes,
            nproc_per_node=strategy.devices,
            run_id=run_id,
            role="trainflow",
            rdzv_endpoint=endpoint,
            rdzv_backend=backend,
            rdzv_configs={"timeout": int(strategy.join_timeout), "last_call_timeout": 1},
            max_restarts=0,
            monitor_interval=0.1,
            start_method="spawn",
            local_addr=local_addr,
            logs_specs=DefaultLogsSpecs(log_dir=os.path.join(workdir, "logs")),
            **extra,
        )
        try:
            with _caller_state_preserved():
                try:
                    outputs = elastic_launch(config, _worker_entry)(payload, opts)
                except ChildFailedError as err:
                    raise _worker_error(err, workdir) from None
                except Exception as err:  # SignalException: the caller got SIGINT/SIGTERM
                    if type(err).__name__ == "SignalException":
                        if getattr(err, "sigval", None) == signal.SIGINT:
                            raise KeyboardInterrupt from err
                    raise
        finally:
            fd = _PENDING_FDS.pop(run_id, None)
            if fd is not None:
                os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
        found = [r for r in sorted(outputs) if outputs[r] is not None]
        if not found:
            raise RuntimeError("DDP launcher: no worker returned rank 0's result")
        output = outputs[found[0]]
        if trainer is not None and output.get("trainer_state") is not None:
            _restore_trainer_state(trainer, output["trainer_state"], args, kwargs)
        return output["result"]

    def _rendezvous(self, run_id: str) -> tuple[str, str, str | None, bool]:
        """(endpoint, rendezvous backend, local_addr, loopback-only) for this job."""
        s = self.strategy
        endpoint = s.rdzv_endpoint or os.environ.get("TRAINFLOW_RDZV_ENDPOINT")
        if s.num_nodes > 1 and not endpoint:
            raise ValueError(
                f"DDPStrategy(num_nodes={s.num_nodes}): the nodes need a meeting point: pass "
                "rdzv_endpoint='host:port' and rdzv_id='<same on every node>' (or set "
                "TRAINFLOW_RDZV_ENDPOINT / TRAINFLOW_RDZV_ID), or start the job with torchrun "
                "(docs/ddp.md)"
            )
        if s.num_nodes > 1 and not (s.rdzv_id or os.environ.get("TRAINFLOW_RDZV_ID")):
            raise ValueError(
                f"DDPStrategy(num_nodes={s.num_nodes}): pass rdzv_id='<same on every node>' "
                "(or set TRAINFLOW_RDZV_ID) so the nodes join the same rendezvous"
            )
        if not endpoint:
            _register_backend()
            sock = _bind("127.0.0.1", 0)
            if sock is None:
                raise OSError("DDP launcher: cannot bind a port on 127.0.0.1")
            port = sock.getsockname()[1]
            _PENDING_FDS[run_id] = sock.detach()
            return f"127.0.0.1:{port}", _BACKEND, "127.0.0.1", True
        host = endpoint.rsplit(":", 1)[0].strip("[]")
        if host in _LOOPBACK_HOSTS:
            _register_backend()
            addr = "::1" if host == "::1" else "127.0.0.1"
            return endpoint.replace("localhost", "127.0.0.1"), _BACKEND, addr, True
        return endpoint, "c10d", None, False


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj)
    except Exception as err:
        raise TypeError(
            "DDP launcher: the function, the Trainer, the module and the dataloaders must be "
            f"picklable to start worker processes (spawn): {type(err).__name__}: {err}. Define "
            "modules, datasets and collate functions at module level (not in a function or a "
            "lambda), and keep open files/locks off the module."
        ) from err


@contextlib.contextmanager
def _caller_state_preserved() -> Iterator[None]:
    """The elastic agent installs signal handlers and sets an env var; put them back after."""
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None:
                saved[sig] = signal.getsignal(sig)
    env_key = "TORCHELASTIC_SIGNALS_TO_HANDLE"
    env_before = os.environ.get(env_key)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        if env_before is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = env_before


def _worker_error(err: Any, workdir: str) -> WorkerError:
    """Turn the agent's ChildFailedError into one error naming the root-cause rank."""
    failures = err.failures  # global rank -> ProcessFailure
    records: dict[int, dict[str, Any]] = {}
    for rank in failures:
        path = os.path.join(workdir, f"error-rank{rank}.json")
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                records[rank] = json.load(f)
    summary: dict[int, str] = {}
    for rank, fail in failures.items():
        if rank in records:
            summary[rank] = f"{records[rank]['type']}: {records[rank]['message']}"
        elif fail.exitcode < 0:
            summary[rank] = f"killed by signal {fail.signal_name()}"
        else:
            summary[rank] = f"exit code {fail.exitcode}"
    signalled = sorted(r for r, f in failures.items() if f.exitcode < 0 and r not in records)
    if signalled:  # a rank killed from outside; the others then failed in their collectives
        rank = signalled[0]
        fail = failures[rank]
        name = fail.signal_name()
        hint = " (the kernel's OOM killer sends SIGKILL: check memory)" if name == "SIGKILL" else ""
        message = (
            f"DDP worker rank {rank} (local rank {fail.local_rank}, pid {fail.pid}) was killed by "
            f"signal {name}{hint}"
        )
        exc_type, tb = "Signal", ""
    elif records:
        rank = min(records, key=lambda r: (records[r]["time"], r))
        rec = records[rank]
        exc_type, tb = rec["type"], rec["traceback"]
        message = (
            f"DDP worker rank {rank} (local rank {rec['local_rank']}, pid {rec['pid']}) failed: "
            f"{rec['type']}: {rec['message']}\n\n--- traceback from rank {rank} ---\n{tb}"
        )
    else:  # it died before our entry point ran: spawn's bootstrap (re-importing __main__)
        rank = min(failures)
        fail = failures[rank]
        exc_type, tb = "Error", ""
        message = (
            f"DDP worker rank {rank} (local rank {fail.local_rank}, pid {fail.pid}) exited with "
            f"code {fail.exitcode} before running the function: see its stderr above. Spawned "
            "workers import the calling script again (as __mp_main__): it must be importable "
            "and start its work only under `if __name__ == \"__main__\":`"
        )
    others = {r: s for r, s in summary.items() if r != rank}
    if others:
        message += "\nother ranks that ended with it: " + "; ".join(
            f"rank {r}: {s.splitlines()[0] if s else s}" for r, s in sorted(others.items())
        )
    return WorkerError(message, rank, exc_type, tb, summary)


def _restore_trainer_state(trainer: Any, state: dict[str, Any], args: tuple, kwargs: dict) -> None:
    """Load rank 0's results into the caller's trainer and module."""
    if hasattr(trainer, "_restore_launcher_state"):  # the Trainer may do it itself
        trainer._restore_launcher_state(state)
        return
    module = _find_module(trainer, args, kwargs)
    if module is not None and state.get("module_state") is not None:
        module.load_state_dict(state["module_state"])
    callbacks = list(getattr(trainer, "callbacks", None) or [])
    for cb, cb_state in zip(callbacks, state.get("callbacks", [])):
        if cb_state is not None and hasattr(cb, "load_state_dict"):
            with contextlib.suppress(Exception):
                cb.load_state_dict(cb_state)
    ckpt = getattr(trainer, "checkpoint_callback", None)
    for key, value in (state.get("checkpoint") or {}).items():
        if ckpt is not None:
            with contextlib.suppress(AttributeError):
                setattr(ckpt, key, value)
    for key in ("callback_metrics", "logged_metrics", "current_epoch", "global_step",
                "should_stop"):
        if key in state:
            _set_attr(trainer, key, state[key])
    if module is not None and getattr(trainer, "lightning_module", False) is None:
        trainer.lightning_module = module  # so trainer.test() after fit() finds the module


# Where a Trainer keeps what a read-only property shows (trainer.trainer.Trainer).
_BACKING = {"callback_metrics": "_epoch_metrics", "logged_metrics": "_logged"}


def _set_attr(obj: Any, key: str, value: Any) -> None:
    prop = getattr(type(obj), key, None)
    if isinstance(prop, property) and prop.fset is None:
        backing = _BACKING.get(key)
        if backing is not None and hasattr(obj, backing):
            setattr(obj, backing, value)
        else:
            log.debug("DDP launcher: could not restore trainer.%s", key)
        return
    setattr(obj, key, value)


def _find_module(trainer: Any, args: tuple, kwargs: dict) -> nn.Module | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, nn.Module):
            return value
    for attr in ("lightning_module", "module", "model"):
        value = getattr(trainer, attr, None)
        if isinstance(value, nn.Module):
            return value
    return None


# ---------------------------------------------------------------------------------------------
# the worker's side (module level, so spawn can import it)


def _watch_parent(parent_pid: int) -> None:
    """Exit if the caller dies (no orphans even when it is SIGKILLed)."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="trainflow-parent-watch", daemon=True).start()


def seed_rank(base_seed: int, rank: int) -> int:
    """Seed python, numpy and torch in a worker from the caller's seed, differently per rank.

    Spawned workers start with fresh, random RNG states: without this, dropout (and anything else
    drawing from the global generators) differs from one identical run to the next. Ranks get
    distinct streams (dropout masks must not repeat across ranks); the weights are the same on
    every rank anyway (the module comes from the caller, DDP broadcasts rank 0's at wrap).
    Returns the seed used.
    """
    import random

    import numpy as np

    seed = (int(base_seed) + 1_000_003 * (rank + 1)) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    return seed


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        items = [_to_cpu(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


def _collect_trainer_state(trainer: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """What the caller's trainer gets back from rank 0."""
    if hasattr(trainer, "_launcher_state"):
        return trainer._launcher_state()
    state: dict[str, Any] = {}
    module = _find_module(trainer, args, kwargs)
    if module is not None:
        state["module_state"] = _to_cpu(dict(module.state_dict()))
    cbs = []
    for cb in list(getattr(trainer, "callbacks", None) or []):
        try:
            cbs.append(_to_cpu(cb.state_dict()) if hasattr(cb, "state_dict") else None)
        except Exception:
            cbs.append(None)
    state["callbacks"] = cbs
    ckpt = getattr(trainer, "checkpoint_callback", None)
    if ckpt is not None:
        state["checkpoint"] = {
            k: _to_cpu(getattr(ckpt, k))
            for k in ("best_model_path", "best_model_score", "last_model_path", "best_k_models",
                      "kth_best_model_path")
            if hasattr(ckpt, k)
        }
    for key in ("callback_metrics", "logged_metrics"):
        value = getattr(trainer, key, None)
        if isinstance(value, dict):
            state[key] = _to_cpu(dict(value))
    for key in ("current_epoch", "global_step", "should_stop"):
        if hasattr(trainer, key):
            state[key] = getattr(trainer, key)
    return state


def _write_error(error_dir: str, exc: BaseException) -> None:
    rank = int(os.environ.get("RANK", "-1"))
    record = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "-1")),
        "pid": os.getpid(),
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "time": time.time(),
    }
    path = os.path.join(error_dir, f"error-rank{rank}.json")
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps(record))


def _worker_entry(payload: bytes, opts: dict[str, Any]) -> dict[str, Any] | None:
    """Runs in each worker: join the group, run the function, hand rank 0's result back."""

    _watch_parent(opts["parent_pid"])
    if opts["loopback"]:
        ifname = _loopback_ifname()
        if ifname:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", ifname)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", ifname)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", opts["nproc"]))
    set_threads_per_rank(local_world, opts["threads"])
    seed_rank(opts["seed"], int(os.environ.get("RANK", "0")))
    strategy = None
    try:
        function, args, kwargs, trainer, strategy = pickle.loads(payload)
        if trainer is not None and getattr(trainer, "strategy", None) is not None:
            strategy = trainer.strategy
        strategy._launched_worker = True
        strategy.setup_environment()
        result = function(*args, **kwargs)
        output = None
        if strategy.global_rank == 0:
            output = {
                "result": _to_cpu(result),
                "trainer_state": (
                    _collect_trainer_state(trainer, args, kwargs) if trainer is not None else None
                ),
            }
        if strategy.world_size > local_world:  # other nodes' agents also return rank 0's result
            output = strategy.broadcast_object(output, src=0)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        strategy._destroy_group()
        return output if local_rank == 0 else None
    except BaseException as exc:
        _write_error(opts["error_dir"], exc)
        raise


__all__ = ["Launcher", "WorkerError"]

_ = torch  # torch is imported here so spawn children load it before unpickling the payload
