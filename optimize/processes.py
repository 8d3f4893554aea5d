"""Candidates in worker processes: `--workers N` on a GPU (or `--parallel processes`).

Optuna's pattern for parallel optimization: N processes, each running `study.optimize` with
the same objective against the same storage (the run's `study.db` or `--storage`). Threads
do not do for training: `proxies.device.torch_settings` sets process-global torch state
around every candidate (the deterministic flag, the thread count, cuDNN's settings), so
concurrent threads would undo each other's settings. Each worker builds its own objective
from a picklable factory (its proxy loads the dataset onto its device there: a CUDA context
is not shared across processes) and its own sampler, seeded ``seed + rank`` so that workers
do not propose in lockstep. Workers are started with ``spawn`` (CUDA cannot be forked).

What holds with several processes:
- Every trial is committed to the storage when it ends, whichever worker ran it; progress
  lines are printed by the main process as trials appear there.
- ``--trials N`` counts distinct architectures across all workers (each worker's stop rule
  reads the shared study). Trials already running when the count is reached finish and are
  kept, so up to N + workers - 1 may be evaluated. A worker that draws an architecture
  another worker is training waits for that result and reuses it (`Objective._await_twin`).
- A worker killed with kill -9 loses only its running trial: its heartbeat stops, and
  another worker fails it and re-queues its candidate (`optimize.storage`).
- Ctrl-C: the main process forwards it once to every worker (workers run in their own
  process group, so a terminal's Ctrl-C is not delivered twice); each stops as a single-worker
  search does: its candidate is marked interrupted and re-queued, and no storage write is cut.
  ``--resume`` then continues to the requested count. After kill -9 of the main process each
  worker finishes its current trial and stops.
- Not reproducible trial for trial: the order in which workers tell results depends on
  timing, so the sampler sees a different history from run to run (as with threads). Each
  candidate's proxy result is still deterministic per architecture and seed (exactly on the
  CPU, best-effort on CUDA).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .budget import RunBudget
from .objective import Objective
from .runner import (
    InfeasibleSearch,
    SearchExhausted,
    quiet_optuna,
    run_optuna,
    tally,
    verdict,
)
from .storage import StorageSpec

__all__ = ["run_processes", "WorkerFailed"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# How often the main process looks for newly finished trials (seconds): a progress line
# late by this much is harmless, and each look is one small read of the storage.
_POLL_S = 0.5


class WorkerFailed(RuntimeError):
    """A worker process died with an error (its traceback is on stderr)."""


@dataclasses.dataclass(frozen=True)
class _Work:
    """What a worker needs, picklable: the storage, and factories for what is not."""

    storage: StorageSpec
    study_name: str
    make_objective: Callable[[], Objective]
    make_sampler: Callable[[int], optuna.samplers.BaseSampler]
    pruner: optuna.pruners.BasePruner | None
    seed: int
    n_trials: int
    budget: RunBudget | None  # on time.time(): shared by the processes


def _work(work: _Work, rank: int, parent: int, stop: Any) -> None:
    # Started with SIGINT blocked (the main process's mask), so a Ctrl-C during start-up
    # waits until here; from now on the main process forwards it (once) and sets `stop`.
    os.setpgrp()  # the terminal's Ctrl-C reaches the main process only

    def orphaned(study: optuna.Study, trial: FrozenTrial) -> None:
        if stop.is_set() or os.getppid() != parent:  # Ctrl-C, or the main process is gone
            study.stop()

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if stop.is_set():
            return
        quiet_optuna()
        study = optuna.load_study(study_name=work.study_name, storage=work.storage.open(),
                                  sampler=work.make_sampler(work.seed + rank), pruner=work.pruner)
        objective = work.make_objective()
        run_optuna(study, objective, work.n_trials, budget=work.budget, on_trial=orphaned)
    except KeyboardInterrupt:
        return  # a running trial is marked interrupted and re-queued (`Objective.__call__`)
    except (InfeasibleSearch, SearchExhausted):
        return  # the search ends short; the main process says why (`verdict`)


def run_processes(study: optuna.Study, *, storage: StorageSpec | str,
                  make_objective: Callable[[], Objective],
                  make_sampler: Callable[[int], optuna.samplers.BaseSampler], seed: int,
                  n_trials: int, workers: int, timeout: float | None = None,
                  on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                  budget: RunBudget | None = None) -> None:
    """`run_optuna` in `workers` processes on `storage` (a `StorageSpec`, or a URL without
    heartbeats; the module docstring says what holds). `study` is this process's view of
    the same storage, read for progress; `make_objective()` and `make_sampler(seed)` must be
    picklable, and so must `budget` (its default clock is). `budget` and `timeout` bound the
    trials as in `run_optuna`: each worker stops starting trials by the costs of the trials
    every worker finished. Raises what `run_optuna` raises, KeyboardInterrupt after Ctrl-C
    (once the workers have stopped), and `WorkerFailed` when a worker died."""
    if tally(study.get_trials(deepcopy=False)).evaluated >= n_trials:
        return
    if isinstance(storage, str):  # a URL alone: no heartbeats
        storage = StorageSpec(storage)
    if budget is None and timeout is not None:
        budget = RunBudget(seconds=timeout, start=time.time(), after_s=0.0)
    work = _Work(storage=storage, study_name=study.study_name, make_objective=make_objective,
                 make_sampler=make_sampler,
                 pruner=study.pruner, seed=seed, n_trials=n_trials, budget=budget)
    seen = {t.number for t in study.get_trials(deepcopy=False, states=_FINISHED)}

    def report_new() -> None:
        new = [t for t in study.get_trials(deepcopy=False, states=_FINISHED) if t.number not in seen]
        for t in sorted(new, key=lambda t: (t.datetime_complete or t.datetime_start, t.number)):
            seen.add(t.number)
            if on_trial is not None:
                on_trial(study, t)

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_work, args=(work, rank, os.getpid(), stop),
                         name=f"search-worker-{rank}") for rank in range(workers)]
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    # Held, not lost, while the workers start (starting one waits until it has read its
    # arguments); they inherit the mask and unblock SIGINT once they can handle it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for p in procs:
            p.start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        while any(p.is_alive() for p in procs):
            if interrupted and not stop.is_set():
                stop.set()
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        os.kill(p.pid, signal.SIGINT)
            report_new()
            time.sleep(_POLL_S)
        report_new()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    dead = [p for p in procs if p.exitcode != 0]
    if dead:
        raise WorkerFailed(f"search worker {dead[0].name} exited with code {dead[0].exitcode}; "
                           "finished trials are in the study, continue with --resume")
    _, why = verdict(study.get_trials(deepcopy=False), n_trials)
    if why is not None:
        raise why

