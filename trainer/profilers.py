"""``Trainer(profiler='simple' | 'pytorch')``: where the time of a stage goes.

- ``SimpleProfiler``: wall time of every step method, hook, training epoch and validation run,
  as a table (mean, calls, total, share) printed to stderr when the stage ends (Lightning's
  "Profiler Report").
- ``PyTorchProfiler``: the stage runs under ``torch.profiler.profile`` with the same actions as
  ``record_function`` labels; the Chrome trace (``chrome://tracing``, Perfetto) is written to
  ``<dirpath or default_root_dir>/<stage>-rank<R>[-N].pt.trace.json`` and the operator table
  printed.

Without a profiler nothing here runs. With one, :func:`profiled` puts timed wrappers on the
module's step methods, the Trainer's hook dispatch and the epoch / validation runs, as instance
attributes for the duration of the stage, and takes them off afterwards: the loop is the same.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["Profiler", "SimpleProfiler", "PyTorchProfiler", "make_profiler", "profiled"]

_STEPS = ("training_step", "validation_step", "test_step", "predict_step")


class Profiler:
    """Base: ``profile(action)`` is a context around one timed action."""

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None

    @contextlib.contextmanager
    def profile(self, action: str) -> Iterator[None]:
        yield

    def start_stage(self, trainer: Any, stage: str) -> None:
        """Called when a stage begins."""

    def end_stage(self, trainer: Any, stage: str) -> None:
        """Called when a stage ends (also after an error)."""


class SimpleProfiler(Profiler):
    """Wall-clock time per action; ``summary()`` is the table printed at the stage's end."""

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        super().__init__(dirpath)
        self.recorded: dict[str, list[float]] = defaultdict(list)
        self._stage_start = 0.0
        self._stage_time = 0.0

    @contextlib.contextmanager
    def profile(self, action: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.recorded[action].append(time.perf_counter() - start)

    def start_stage(self, trainer: Any, stage: str) -> None:
        self.recorded.clear()
        self._stage_start = time.perf_counter()

    def end_stage(self, trainer: Any, stage: str) -> None:
        self._stage_time = time.perf_counter() - self._stage_start
        if trainer.is_global_zero:
            print(self.summary(stage), file=sys.stderr)

    def summary(self, stage: str = "fit") -> str:
        """Actions by total time: mean duration, calls, total, % of the stage's wall time."""
        rows = sorted(((a, sum(d), len(d)) for a, d in self.recorded.items()),
                      key=lambda r: -r[1])
        total = self._stage_time or sum(r[1] for r in rows) or 1.0
        header = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
        body = [(a, f"{t / n:.6f}", str(n), f"{t:.6f}", f"{100 * t / total:.2f}")
                for a, t, n in rows]
        body.insert(0, ("Total", "-", str(sum(r[2] for r in rows)), f"{total:.6f}", "100.00"))
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(5)]
        out = [f"{stage.upper()} Profiler Report"]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                for r in [header, *body]]
        return "\n".join(out)


class PyTorchProfiler(Profiler):
    """torch.profiler around the stage; the Chrome trace written when the stage ends."""

    def __init__(self, dirpath: str | os.PathLike | None = None, row_limit: int = 20) -> None:
        super().__init__(dirpath)
        self.row_limit = row_limit
        self.trace_path: str | None = None
        self._prof: Any = None

    @contextlib.contextmanager
    def profile(self, action: str) -> Iterator[None]:
        with torch.profiler.record_function(action):
            yield

    def start_stage(self, trainer: Any, stage: str) -> None:
        activities = trainer.strategy.accelerator.profiler_activities()
        self._prof = torch.profiler.profile(activities=activities)
        self._prof.__enter__()

    def end_stage(self, trainer: Any, stage: str) -> None:
        prof, self._prof = self._prof, None
        if prof is None:
            return
        prof.__exit__(None, None, None)
        folder = self.dirpath or trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        base = os.path.join(folder, f"{stage}-rank{trainer.global_rank}")
        path, n = f"{base}.pt.trace.json", 1
        while os.path.exists(path):  # a later stage or run does not overwrite an earlier trace
            path, n = f"{base}-{n}.pt.trace.json", n + 1
        prof.export_chrome_trace(path)
        self.trace_path = path
        if trainer.is_global_zero:
            table = prof.key_averages().table(sort_by="self_cpu_time_total",
                                              row_limit=self.row_limit)
            print(f"{stage.upper()} Profiler Report (trace: {path})\n{table}", file=sys.stderr)


def make_profiler(value: Any) -> Profiler | None:
    """The Trainer's ``profiler`` flag → a Profiler (or None), or a ValueError naming it."""
    if value is None or isinstance(value, Profiler):
        return value
    if value == "simple":
        return SimpleProfiler()
    if value == "pytorch":
        return PyTorchProfiler()
    raise ValueError("Trainer(profiler=...): must be None, 'simple', 'pytorch' or a "
                     f"trainer.profilers.Profiler (got {value!r})")


def _timed(profiler: Profiler, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with profiler.profile(action):
            return fn(*args, **kwargs)

    return run


@contextlib.contextmanager
def profiled(trainer: Any, module: Any, stage: str) -> Iterator[None]:
    """Within: ``trainer.profiler`` times the module's steps, every hook and the epoch runs."""
    profiler = trainer.profiler
    if profiler is None:
        yield
        return
    owner = type(module).__name__
    patched: list[tuple[Any, str]] = []

    def patch(obj: Any, name: str, action: str) -> None:
        obj.__dict__[name] = _timed(profiler, action, getattr(obj, name))
        patched.append((obj, name))

    saved = {n: module.__dict__[n] for n in _STEPS if n in module.__dict__}
    for name in _STEPS:
        patch(module, name, f"[TrainModule]{owner}.{name}")
    patch(trainer.fit_loop, "run_epoch", "run_training_epoch")
    patch(trainer, "_run_validation_in_fit", "run_validation")
    call_hook = trainer._call_hook
    hook_callers = trainer._hook_callers

    def timed_call_hook(name: str, *args: Any, **kwargs: Any) -> None:
        with profiler.profile(f"[hooks]{name}"):
            call_hook(name, *args, **kwargs)

    def timed_hook_callers(name: str) -> list[Any]:  # the per-batch hooks the loop calls
        return [_timed(profiler, f"[hooks]{name}", f) for f in hook_callers(name)]

    trainer.__dict__["_call_hook"] = timed_call_hook
    trainer.__dict__["_hook_callers"] = timed_hook_callers
    patched += [(trainer, "_call_hook"), (trainer, "_hook_callers")]
    profiler.start_stage(trainer, stage)
    try:
        yield
    finally:
        profiler.end_stage(trainer, stage)
        for obj, name in patched:
            obj.__dict__.pop(name, None)
        module.__dict__.update(saved)
