"""The sweep's Optuna study: in memory for the sampler and the pruner, written through to its
database.

The database (SQLite in the project by default, the team stack's PostgreSQL, any SQLAlchemy URL)
is the study of record: a rerun loads everything from it, and other tools read it. But TPE's ask
on it read the whole study back through SQLAlchemy each time (≈ 47 round trips: 25-35 ms a
trial, the tell 10-15 ms more), where the same ask on Optuna's InMemoryStorage takes ≈ 1.3 ms.
So the sweep process (alone on its study: ``flows/sweep_lock.py``) loads the study into memory
once, asks and tells there, and writes each trial to the database twice:

- when asked: the trial, RUNNING with its params, in one transaction; a run killed during the
  trial leaves it so, and the next run asks those params again (its fit resumes from its
  checkpoint, or is read back from its folder if it had finished);
- when told: its intermediate values, state and value, on a background thread while the next
  round trains (≈ 10 ms of SQLAlchemy for a 15-epoch trial), started by :meth:`start_writes`
  once that round is asked and submitted, so the asks wait neither for the database's write
  lock nor for the GIL; a run killed before that write asks the trial again, and it is read
  back from its folder.

Trial numbers are the same in memory and in the database: both number trials in creation order,
and this process is the only one writing to the study.
"""

from __future__ import annotations

import functools
import sqlite3
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any


@functools.cache
def open_storage(url: str) -> Any:
    """The study database (an Optuna ``RDBStorage``), opened once per process.

    Opening one checks its schema with alembic (≈ 0.3 s). A SQLite file is switched to
    write-ahead logging (kept in the file) and its connections to ``synchronous=NORMAL``: a
    commit does not wait for the disk (10-40 ms each with the rollback journal on a busy
    machine). A crash of the process loses nothing; a power cut may lose the last writes, never
    the file's consistency, and a trial that lost its end is asked again.
    """
    import optuna

    db = url.removeprefix("sqlite:///")
    sqlite = db != url and "?" not in db and db != ":memory:"
    if sqlite:
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    rdb = optuna.storages.RDBStorage(url)
    if sqlite:
        from sqlalchemy import event

        def _no_wait(conn: Any, _record: Any) -> None:
            conn.execute("PRAGMA synchronous=NORMAL")

        event.listen(rdb.engine, "connect", _no_wait)
        rdb.engine.dispose()  # the connections opened while checking the schema lack it
    return rdb


class SweepStudy:
    """The study named ``name`` in the database at ``url``, held in memory.

    Read the trials from :attr:`study` (an ordinary ``optuna.Study``); ask, tell and set user
    attributes through this object, so they reach the database too. A trial a killed run left
    unfinished is failed and queued again with its params (user attribute ``resumes``: its
    number), as the first to be asked. :meth:`close` writes what is left and waits.
    """

    def __init__(self, url: str, name: str, sampler: Any, pruner: Any, direction: str) -> None:
        import optuna
        from optuna.trial import TrialState

        self._db = open_storage(url)
        optuna.create_study(storage=self._db, study_name=name, direction=direction,
                            load_if_exists=True)  # the record: created on the first run
        self._db_study = self._db.get_study_id_from_name(name)
        self._mem = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(storage=self._mem, study_name=name, sampler=sampler,
                                         pruner=pruner, direction=direction)
        self._mem_study = self._mem.get_study_id_from_name(name)
        for key, value in self._db.get_study_user_attrs(self._db_study).items():
            self._mem.set_study_user_attr(self._mem_study, key, value)
        self._db_ids: dict[int, int] = {}  # trial number -> database trial id, while running
        self._replaces: dict[int, int] = {}  # queued trial's number -> the unfinished one's id
        self._writes: list[Future[None]] = []
        self._told: list[tuple[int, Any]] = []  # (database id, finished trial) to write
        unfinished = []
        for t in self._db.get_all_trials(self._db_study, deepcopy=False):
            if not t.state.is_finished():
                unfinished.append(t)
                t = optuna.trial.create_trial(
                    state=TrialState.FAIL, params=t.params, distributions=t.distributions,
                    user_attrs=t.user_attrs, system_attrs=t.system_attrs,
                    intermediate_values=t.intermediate_values)
            self._mem.create_new_trial(self._mem_study, template_trial=t)
        for t in unfinished:  # a WAITING one (enqueued by hand) holds its params in fixed_params
            self._replaces[len(self.study.get_trials(deepcopy=False))] = t._trial_id
            params = {**t.system_attrs.get("fixed_params", {}), **t.params}
            self.study.enqueue_trial(params, user_attrs={"resumes": t.number})

    def ask(self, space: dict[str, Any], n: int = 1) -> list[tuple[Any, Any]]:
        """``n`` new trials over ``space``, each recorded RUNNING with its params in the
        database; returns each with a frozen copy (what a worker needs to prune it)."""
        from optuna.trial import TrialState

        asked = []
        for _ in range(n):
            t = self.study.ask(space)
            frozen = self._mem.get_trial(
                self._mem.get_trial_id_from_study_id_trial_number(self._mem_study, t.number))
            self._db_ids[t.number] = self._db.create_new_trial(self._db_study,
                                                               template_trial=frozen)
            old = self._replaces.pop(t.number, None)
            if old is not None:  # only now: killed before this point, the next run re-queues it
                self._db.set_trial_state_values(old, TrialState.FAIL)
            asked.append((t, frozen))
        return asked

    def tell(self, trial: Any, value: float | None = None, state: Any = None,
             curve: dict[int, float] | None = None) -> Any:
        """Finish ``trial`` with its ``curve`` (the objective by step, reported by its worker to
        a copy of the study) and ``value`` or ``state``; returns the finished FrozenTrial."""
        for w in self._writes:  # a failed write stops the sweep at the next trial
            if w.done() and w.exception() is not None:
                raise w.exception()  # type: ignore[misc]
        for step, v in sorted((curve or {}).items()):
            trial.report(v, step)
        done = self.study.tell(trial, value, state=state)
        self._told.append((self._db_ids.pop(trial.number), done))
        return done

    def start_writes(self, writer: Executor) -> None:
        """Start writing the trials told so far to the database, on ``writer`` (the sweep's
        background thread)."""
        told, self._told = self._told, []
        self._writes.extend(writer.submit(self._write_end, *t) for t in told)

    def _write_end(self, db_id: int, done: Any) -> None:
        for step, v in done.intermediate_values.items():
            self._db.set_trial_intermediate_value(db_id, step, v)
        self._db.set_trial_state_values(db_id, done.state, done.values)

    def close(self, writer: Executor) -> None:
        """Write the trials told and wait for the database writes; the first failed one is
        raised here."""
        self.start_writes(writer)
        writes, self._writes = self._writes, []
        for w in writes:
            w.result()

    def set_user_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)
        self._db.set_study_user_attr(self._db_study, key, value)
