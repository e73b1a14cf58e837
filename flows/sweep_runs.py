"""The sweep's MLflow child runs, written off the trials' path.

A trial logs into ``curves.jsonl`` in its folder (``tasks/trial.py``); once it is told, its
child run (nested under the sweep's run: the trial's params, curves and state) is written here
by the sweep's writer process (``flows/sweep_writer.py``) while the next trial trains: each of
the run's commits (create, params and metrics, end) waits 10-35 ms for the disk on the embedded
SQLite store, and a trial's fit is well under a second. Written from a thread of the sweep's
process, its ≈ 25 ms of Python took the GIL from the asks and the fit; the writes start once
the next round is asked and submitted (:meth:`ChildRuns.start_writes`). :meth:`ChildRuns.close`
waits for them, and also writes the run of any finished trial that has none (a process killed
between a trial's end and its run's), so every finished trial in the study has one child run.
"""

from __future__ import annotations

import functools
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from trainer.loggers.mlflow import write_params, write_rows


@functools.cache
def _client(uri: str) -> Any:  # one per process (the writer's, the sweep's)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def warm() -> None:
    """Import what the writer needs before the first write is due (opening the stores is left
    to the first write: on a new SQLite file, two processes would create its tables at once)."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import optuna.storages  # noqa: F401


class ChildRuns:
    """Write trials' child runs under ``parent`` in the store at ``uri``, on ``writer``."""

    def __init__(self, uri: str, parent: str, sweep: str, writer: Executor) -> None:
        self.uri = uri
        self.client = _client(uri)
        self.parent = parent
        self.sweep = sweep
        self._experiment = self.client.get_run(parent).info.experiment_id
        self._pool = writer
        self._pending: list[Future[tuple[int, str]]] = []
        self._held: list[tuple[Any, Path, str, str, str]] = []

    def add(self, trial: Any, folder: Path, state: str, data_hash: str, key: str) -> None:
        """Hold the child run of a told ``trial`` (an Optuna FrozenTrial) from ``folder``."""
        self._held.append((trial, Path(folder), state, data_hash, key))

    def start_writes(self) -> None:
        """Start writing the held runs, on the writer (their curves read here: the writer
        imports neither torch nor prefect)."""
        held, self._held = self._held, []
        self._pending.extend(self._pool.submit(write_run, *self._job(*h)) for h in held)

    def _job(self, trial: Any, folder: Path, state: str, data_hash: str, key: str) -> tuple:
        from tasks.trial import read_curves

        params, rows = read_curves(folder)
        return (self.uri, self._experiment, self.parent, self.sweep, trial, params, rows, state,
                data_hash, key)

    def close(self, study: Any, folder_of: Any, data_hash: str) -> dict[int, str]:
        """Wait for the queued runs; write those finished trials still lack; return the child
        run id of each finished trial by number. ``folder_of(trial)``: its folder and key."""
        from optuna.trial import TrialState

        try:
            self.start_writes()
            for f in self._pending:
                f.result()  # a failed write raises here, on the flow's thread
            runs = self.existing()
            for t in study.get_trials(deepcopy=False,
                                      states=(TrialState.COMPLETE, TrialState.PRUNED)):
                if t.number not in runs:
                    folder, key = folder_of(t)
                    state = "pruned" if t.state == TrialState.PRUNED else "complete"
                    runs[t.number] = write_run(*self._job(t, folder, state, data_hash, key))[1]
            return runs
        finally:
            self._pending = []

    def existing(self) -> dict[int, str]:
        """The child runs already in the store: trial number → run id."""
        runs: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [self._experiment], f"tags.`mlflow.parentRunId` = '{self.parent}'",
                max_results=1000, page_token=token)
            for r in page:
                number = r.data.tags.get("trainflow.trial")
                if number is not None:
                    runs.setdefault(int(number), r.info.run_id)
            token = page.token
            if not token:
                return runs



def write_run(
    uri: str, experiment: str, parent: str, sweep: str, trial: Any, params: dict[str, str],
    rows: list[tuple[float, int, dict[str, float]]], state: str, data_hash: str, key: str,
) -> tuple[int, str]:
    """Write the child run of a told ``trial`` (an Optuna FrozenTrial) with the ``params`` and
    metric ``rows`` of its curves; returns its number and the run's id."""
    from mlflow.entities import RunStatus

    client = _client(uri)
    params = dict(params)
    params.update({f"sweep.{k}": str(v) for k, v in trial.params.items()})
    tags = {
        "mlflow.parentRunId": parent,
        "trainflow.sweep": sweep,
        "trainflow.trial": str(trial.number),
        "trainflow.trial_state": state,
        "trainflow.data_hash": data_hash,
        "trainflow.train_key": key,
    }
    start = trial.datetime_start
    run = client.create_run(
        experiment, run_name=f"trial-{trial.number}", tags=tags,
        start_time=int(start.timestamp() * 1000) if start else None)
    run_id = run.info.run_id
    write_params(client, run_id, params)
    write_rows(client, run_id, rows, keymap={}, history=None, last_epoch=[None])
    end = trial.datetime_complete
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED),
                          end_time=int(end.timestamp() * 1000) if end else None)
    return trial.number, run_id
