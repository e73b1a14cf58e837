"""The sweep's writer: a child process that writes what the trials told (their rows in the study's
database, their MLflow child runs) while the next trials train.

On a thread of the sweep's process, those writes (≈ 35 ms of SQLAlchemy a trial) took the GIL
from the asks and from the fit of a trial running on another thread; a process of its own runs
them on the core a one-at-a-time sweep leaves idle (trials use ``num_threads: 1``).

It is ``python -m flows.sweep_writer``, not a ``multiprocessing`` child: spawn would run the
caller's main script again in it, which breaks a script that calls the sweep without an
``if __name__ == "__main__"`` guard. Jobs (a module-level function and its arguments) and their
results go over the child's stdin and stdout, pickled: a channel between two processes of this
sweep, nothing read from a file. :class:`Writer` is a ``concurrent.futures.Executor``; jobs run
one at a time, in the order submitted. The child ends when its stdin closes (the sweep ended,
however it ended).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class Writer(Executor):
    """Run submitted functions in the writer process, in order; ``shutdown`` waits for them."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "flows.sweep_writer"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env)
        self._futures: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._reader = threading.Thread(target=self._read, name="sweep-writer-results",
                                        daemon=True)
        self._reader.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        job = pickle.dumps((self._seq, fn, args, kwargs))
        with self._lock:
            self._futures[self._seq] = future
            self._seq += 1
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(job)
                self._proc.stdin.flush()
            except OSError as err:  # the writer died: say so on this job
                future.set_exception(RuntimeError(f"sweep writer process ended ({err})"))
        return future

    def _read(self) -> None:
        assert self._proc.stdout is not None
        while True:
            try:
                seq, ok, value = pickle.load(self._proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            future = self._futures.pop(seq)
            future.set_result(value) if ok else future.set_exception(value)
        with self._lock:
            left = list(self._futures.values())
        for future in left:  # the process ended with jobs left
            if not future.done():
                future.set_exception(RuntimeError(
                    f"sweep writer process ended (exit code {self._proc.wait()})"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()  # the child finishes its jobs, then sees the end
        if wait:
            self._reader.join()
            self._proc.wait()


def _serve() -> None:
    """The child: run each job read from stdin, send back its result or its error."""
    import signal

    # Ctrl-C reaches the whole process group: the sweep stops, and this one writes what was
    # told before it, then ends when the sweep closes its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jobs, results = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # what the libraries print must not go into the results
    while True:
        try:
            seq, fn, args, kwargs = pickle.load(jobs)
        except EOFError:
            return
        try:
            reply = (seq, True, fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - the caller raises it
            reply = (seq, False, err)
        try:
            data = pickle.dumps(reply)
        except Exception:  # an error that does not pickle: its text
            data = pickle.dumps((seq, False, RuntimeError(f"{type(reply[2]).__name__}: "
                                                          f"{reply[2]}")))
        results.write(data)
        results.flush()


if __name__ == "__main__":
    _serve()
