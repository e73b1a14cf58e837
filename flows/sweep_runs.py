"""The sweep's MLflow child runs, written off the trials' path.

A trial logs into ``curves.jsonl`` in its folder (``tasks/trial.py``); once it is told, its
child run (nested under the sweep's run: the trial's params, curves and state) is written here
on one background thread while the next trial trains: each of the run's commits (create, params
and metrics, end) waits 10-35 ms for the disk on the embedded SQLite store, and a trial's fit
is well under a second. The writes (≈ 25 ms of Python a run, 60-170 ms with the commits) start
once the next round is asked and submitted (:meth:`ChildRuns.start_writes`): started at the
tell, they took half the GIL from the next asks. :meth:`ChildRuns.close` waits for them, and
also writes the run of any finished trial that has none (a process killed between a trial's end
and its run's), so every finished trial in the study has one child run.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from trainer.loggers.mlflow import write_params, write_rows


class ChildRuns:
    """Write trials' child runs under ``parent`` on the sweep's background thread."""

    def __init__(self, client: Any, parent: str, sweep: str) -> None:
        self.client = client
        self.parent = parent
        self.sweep = sweep
        self._experiment = client.get_run(parent).info.experiment_id
        self._pending: list[Future[tuple[int, str]]] = []
        self._held: list[tuple[Any, Path, str, str, str]] = []

    def add(self, trial: Any, folder: Path, state: str, data_hash: str, key: str) -> None:
        """Hold the child run of a told ``trial`` (an Optuna FrozenTrial) from ``folder``."""
        self._held.append((trial, Path(folder), state, data_hash, key))

    def start_writes(self, writer: Executor) -> None:
        """Start writing the held runs, on ``writer`` (the sweep's background thread)."""
        held, self._held = self._held, []
        self._pending.extend(writer.submit(self._write, *h) for h in held)

    def close(self, writer: Executor, study: Any, folder_of: Any,
              data_hash: str) -> dict[int, str]:
        """Wait for the queued runs; write those finished trials still lack; return the child
        run id of each finished trial by number. ``folder_of(trial)``: its folder and key."""
        from optuna.trial import TrialState

        self.start_writes(writer)
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()  # a failed write raises here, on the flow's thread
        runs = self.existing()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.number not in runs:
                folder, key = folder_of(t)
                state = "pruned" if t.state == TrialState.PRUNED else "complete"
                runs[t.number] = self._write(t, folder, state, data_hash, key)[1]
        return runs

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

    def _write(self, trial: Any, folder: Path, state: str, data_hash: str,
               key: str) -> tuple[int, str]:
        from mlflow.entities import RunStatus

        from tasks.trial import read_curves

        params, rows = read_curves(folder)
        params.update({f"sweep.{k}": str(v) for k, v in trial.params.items()})
        tags = {
            "mlflow.parentRunId": self.parent,
            "trainflow.sweep": self.sweep,
            "trainflow.trial": str(trial.number),
            "trainflow.trial_state": state,
            "trainflow.data_hash": data_hash,
            "trainflow.train_key": key,
        }
        start = trial.datetime_start
        run = self.client.create_run(
            self._experiment, run_name=f"trial-{trial.number}", tags=tags,
            start_time=int(start.timestamp() * 1000) if start else None)
        run_id = run.info.run_id
        write_params(self.client, run_id, params)
        write_rows(self.client, run_id, rows, keymap={}, history=None, last_epoch=[None])
        end = trial.datetime_complete
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED),
                                   end_time=int(end.timestamp() * 1000) if end else None)
        return trial.number, run_id
