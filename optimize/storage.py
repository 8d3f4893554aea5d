"""Where a study lives, and what keeps it whole when several workers share it.

Optuna's way to scale out (its tutorial "Easy Parallelization"): start the same command in
many processes, on many machines, against one storage; the storage hands out the trials.
`--storage` takes:

- ``sqlite:///path/study.db``: the run folder's default; one machine.
- ``postgresql://user:password@host[:port]/db`` (the psycopg 3 driver, the ``postgres``
  extra) or ``mysql+pymysql://...``: a database server every worker reaches.
- ``journal:/path/study.log``: Optuna's `JournalFileBackend`, an append-only log on a
  (shared) file system; no server needed.

A worker killed with kill -9 leaves its trial RUNNING. Every storage opened here records a
heartbeat for each running trial every `heartbeat_s` seconds (Optuna's heartbeat thread,
`RDBStorage(heartbeat_interval=..., grace_period=...)`); before drawing a trial, any worker
fails the trials whose heartbeat is older than the grace period (Optuna's
`fail_stale_trials`) and re-queues their parameters (`RetryLost`, Optuna's
`RetryHeartbeatStaleTrialCallback`). Optuna's journal storage has no heartbeat, so
`JournalStorage` here adds one with the same interface (the heartbeat is a trial system
attribute holding the wall-clock time: the machines sharing a journal need synchronized
clocks, as NFS does anyway). A lost trial is marked `INTERRUPTED` (not evaluated, no twin)
with a `fail_reason` before it is failed, so counts and duplicate reuse ignore it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from .objective import INTERRUPTED, LOST

__all__ = ["StorageSpec", "StorageError", "open_storage", "RetryLost", "JournalStorage",
           "redact", "GRACE_HEARTBEATS", "MAX_RETRY"]

#: A running trial is declared lost after this many heartbeats without one: a busy machine
#: (8 workers on 2 cores) delays the heartbeat thread by seconds, never by several intervals.
GRACE_HEARTBEATS = 4
#: A candidate whose worker died this many times in a row is not re-queued again (a network
#: that gets its worker killed, e.g. by the kernel's OOM killer, would otherwise loop).
MAX_RETRY = 2
# SQLite waits this long for another process's write lock instead of failing at once with
# "database is locked" (its default is 5 s; a trial's writes are few and short).
_SQLITE_TIMEOUT_S = 60
# A database server that does not answer within this many seconds is reported unreachable.
_CONNECT_TIMEOUT_S = 10
#: The driver each database URL needs, and how to install it.
_DRIVERS = {"postgresql": "psycopg (pip install 'psycopg[binary]==3.3.9', or the project's "
                          "'postgres' extra)",
            "mysql": "PyMySQL (pip install PyMySQL, and a mysql+pymysql:// URL)"}


class StorageError(ValueError):
    """The storage cannot be used: a bad URL, a missing driver, an unreachable server, a
    wrong password. One line; the CLI prints it and exits 2."""


def redact(url: str) -> str:
    """`url` with its password replaced by ***, for messages and `run.json`."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    """A storage URL and its heartbeat, picklable (worker processes open it themselves).

    `heartbeat_s`: seconds between heartbeats of a running trial; None turns heartbeats off
    (reading a study: `search.py show`, `export`)."""

    url: str
    heartbeat_s: int | None = None

    @property
    def grace_s(self) -> int | None:
        """Seconds without a heartbeat after which a running trial is lost."""
        return None if self.heartbeat_s is None else GRACE_HEARTBEATS * self.heartbeat_s

    @property
    def kind(self) -> str:
        """journal, sqlite, postgresql, mysql, ... (the URL's scheme, its driver dropped)."""
        if self.url.startswith("journal:"):
            return "journal"
        return self.url.split(":", 1)[0].split("+", 1)[0]

    def open(self) -> BaseStorage:
        return open_storage(self)


def open_storage(spec: StorageSpec) -> BaseStorage:
    """The Optuna storage for `spec`, connected (tables created where needed). Raises
    `StorageError` with one line naming what is wrong."""
    if spec.heartbeat_s is not None and spec.heartbeat_s < 1:
        raise StorageError(f"--heartbeat: {spec.heartbeat_s} must be >= 1 second")
    if spec.kind != "journal" and "://" not in spec.url:
        raise StorageError(f"--storage {redact(spec.url)}: not a storage URL; use sqlite:///PATH, "
                           "postgresql://USER:PASSWORD@HOST/DB or journal:/PATH")
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _journal(spec) if spec.kind == "journal" else _rdb(spec)


def _rdb(spec: StorageSpec) -> BaseStorage:
    import sqlalchemy.exc

    connect_args: dict[str, Any] = {}
    if spec.kind == "sqlite":
        connect_args["timeout"] = _SQLITE_TIMEOUT_S
    elif spec.kind in ("postgresql", "mysql"):
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    # A connection from the pool is checked before use: a server restarted between two trials
    # would otherwise fail the next write.
    engine_kwargs: dict[str, Any] = {"connect_args": connect_args, "pool_pre_ping": True}
    heartbeat: dict[str, Any] = {}
    if spec.heartbeat_s is not None:
        heartbeat = {"heartbeat_interval": spec.heartbeat_s, "grace_period": spec.grace_s,
                     "heartbeat_stale_trial_callback": RetryLost(MAX_RETRY)}
    try:
        return RDBStorage(spec.url, engine_kwargs=engine_kwargs, **heartbeat)
    except ImportError:
        hint = _DRIVERS.get(spec.kind, "its SQLAlchemy driver")
        raise StorageError(f"--storage {redact(spec.url)}: the {spec.kind} driver is not "
                           f"installed; install {hint}") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(f"--storage {redact(spec.url)}: not a storage URL SQLAlchemy knows "
                           f"({_one_line(e)})") from None
    except sqlalchemy.exc.DBAPIError as e:
        raise StorageError(f"--storage {redact(spec.url)}: cannot connect: "
                           f"{_one_line(e.orig or e)}") from None


def _one_line(error: BaseException) -> str:
    """The first line of a driver's message, whitespace collapsed."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"\s+", " ", re.sub(r"^\([\w.]+\)\s*", "", text))


def _journal(spec: StorageSpec) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    path = Path(spec.url[len("journal:"):])
    if not str(path) or path.is_dir():
        raise StorageError(f"--storage {spec.url}: name a log file, journal:/PATH/study.log")
    if not path.parent.is_dir():
        raise StorageError(f"--storage {spec.url}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(f"--storage {spec.url}: not writable")
    return JournalStorage(JournalFileBackend(str(path)), heartbeat_s=spec.heartbeat_s,
                          grace_s=spec.grace_s, on_lost=RetryLost(MAX_RETRY))


def mark_lost(storage: BaseStorage, trial_id: int, reason: str) -> None:
    """Flag a RUNNING trial as cut off (`INTERRUPTED`, `LOST`, `fail_reason`) before it is
    failed: it was not evaluated, is no twin, and does not count toward `--trials`. A trial
    that finished meanwhile is left as it is."""
    try:
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        storage.set_trial_user_attr(trial_id, LOST, True)
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    except UpdateFinishedTrialError:
        pass


class RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage; stale trials are flagged (`mark_lost`) before Optuna fails them."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            mark_lost(self, trial_id, f"worker lost (no heartbeat for {self.grace_period} s)")
        return stale


class JournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with heartbeats (Optuna's `BaseHeartbeat`; see the module
    docstring): the heartbeat is the trial system attribute `heartbeat` (seconds since the
    epoch), written by Optuna's heartbeat thread while the trial runs."""

    _KEY = "heartbeat"

    def __init__(self, backend: Any, *, heartbeat_s: int | None = None, grace_s: int | None = None,
                 on_lost: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        super().__init__(backend)
        self._heartbeat_s, self._grace_s, self._on_lost = heartbeat_s, grace_s, on_lost

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, self._KEY, time.time())
        except UpdateFinishedTrialError:
            pass  # another worker declared the trial lost; this one finds out when it tells

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self._grace_s is not None
        now = time.time()
        stale = [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False,
                                                          states=(TrialState.RUNNING,))
                 if self._KEY in t.system_attrs and now - t.system_attrs[self._KEY] > self._grace_s]
        for trial_id in stale:
            mark_lost(self, trial_id, f"worker lost (no heartbeat for {self._grace_s} s)")
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._on_lost


class RetryLost(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial: its parameters are enqueued as a new
    WAITING trial (system attributes `failed_trial`, `retry_history`), at most `max_retry`
    times per candidate. The retry starts clean: the lost trial's user attributes (its
    architecture, and the `INTERRUPTED` flag that would keep the retry from counting) are
    not copied, since the retry records its own."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not trial.params:  # lost while drawing: nothing to retry, the next draw replaces it
            return
        clean = copy.copy(trial)
        clean.user_attrs = {}
        super().__call__(study, clean)
