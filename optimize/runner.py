"""Running a study: Optuna locally (ask/tell through `study.optimize`) or Ray Tune.

The study lives in an Optuna storage (SQLite in the run folder by default). Every trial is
committed to it as it finishes, so Ctrl-C or kill -9 loses at most the running trials; on
`--resume` those are marked FAIL and their parameters re-enqueued, and the study continues
until `n_trials` distinct architectures have been evaluated: infeasible candidates (never
trained) and repeated proposals (an architecture evaluated before, recorded with
`duplicate_of`) do not count.

Several processes, on one machine or many, may run the same study on a shared storage
(`--storage`, `optimize.storage`): the count, the twins and the early-stopping history are
read from the storage, so they are the study's, not the process's. A trial whose worker
died is failed and re-queued by another worker after its heartbeat stops.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search_space import ConstraintInfeasible

from .budget import RunBudget
from .objective import (
    DUPLICATE,
    FIDELITY,
    INFEASIBLE,
    INTERRUPTED,
    LOST,
    PROMOTED_FROM,
    RUNG,
    STOPPED,
    SURPLUS,
    CandidateFailed,
    Objective,
)

__all__ = ["SAMPLERS", "make_sampler", "open_study", "evaluated", "Tally", "tally", "SearchExhausted",
           "InfeasibleSearch", "run_optuna", "recover_zombies", "StudyMismatch", "create_or_join",
           "trial_cost", "measured_costs"]

_log = logging.getLogger(__name__)

STUDY_NAME = "pconv-nas"
# Infeasible draws cost microseconds; beyond this many per wanted trial the constraints are
# hopeless and the run stops with "constraint infeasible" instead of spinning.
_MAX_INFEASIBLE_PER_TRIAL = 200
# A repeat costs a sampler call and a few storage writes. A sampler that proposes only
# architectures already evaluated this many times in a row has nothing new to offer (a
# space smaller than --trials, or TPE collapsed on its best points): stop instead of spinning.
# TPE over the default space repeated itself at most 8 times in a row in runs of 100
# architectures (seeds 0-2, synthetic accuracy), so 100 leaves a wide margin.
_MAX_REPEATS_IN_A_ROW = 100


def make_sampler(name: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, n_trials // 4)))
    if name == "nsga2":
        # A population of a quarter of the budget gives NSGA-II a few generations.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(2, n_trials // 4)))
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


SAMPLERS = ("tpe", "nsga2", "random", "gp")


class StudyMismatch(ValueError):
    """The storage holds a study of that name that this search cannot continue (other
    directions: made by another tool, or for other devices)."""


def open_study(storage: str | optuna.storages.BaseStorage, directions: list[str],
               sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner | None = None,
               study_name: str = STUDY_NAME) -> optuna.Study:
    """Create or reopen the run's study (resume continues the same one, and workers started
    on one storage join one study). Raises `StudyMismatch` when the study exists with other
    directions."""
    return create_or_join(storage, directions, sampler, pruner, study_name)[0]


def create_or_join(storage: str | optuna.storages.BaseStorage, directions: list[str],
                   sampler: optuna.samplers.BaseSampler,
                   pruner: optuna.pruners.BasePruner | None = None,
                   study_name: str = STUDY_NAME) -> tuple[optuna.Study, bool]:
    """`open_study`, and whether this call created the study. Of several workers started at
    once exactly one creates it (the storage refuses a second study of the same name), which
    makes it the one that scores the presets and promotes (`optimize.cli`)."""
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                    sampler=sampler, pruner=pruner)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler,
                                  pruner=pruner)
    found = [d.name.lower() for d in study.directions]
    if found != [d.lower() for d in directions]:
        raise StudyMismatch(f"study {study_name!r} in this storage optimizes {found}, this search "
                            f"{directions}; give another --study-name")
    return study, False


def evaluated(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward `--trials`: a newly evaluated architecture, trained (fully
    or stopped early) or failed. Not counted: a repeat of an architecture evaluated before
    (`duplicate_of`), an infeasible candidate, a trial cut off by an interruption (its
    candidate is re-queued and evaluated on resume), a promotion to a longer budget
    (`optimize.promote`), a surplus trial (`Objective._await_budget`: not trained)."""
    if DUPLICATE in trial.user_attrs or RUNG in trial.user_attrs or SURPLUS in trial.user_attrs:
        return False
    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state == TrialState.FAIL:
        return INTERRUPTED not in trial.user_attrs
    return trial.state == TrialState.PRUNED and INFEASIBLE not in trial.user_attrs


class Tally(NamedTuple):
    """Where a study stands against its budget and its bounds."""

    evaluated: int           # distinct architectures evaluated (`evaluated`)
    infeasible: int          # candidates that broke the constraints, never trained
    repeats_in_a_row: int    # repeated proposals since the last newly evaluated architecture

    @property
    def stuck(self) -> bool:
        """The sampler proposed nothing new for `_MAX_REPEATS_IN_A_ROW` proposals."""
        return self.repeats_in_a_row >= _MAX_REPEATS_IN_A_ROW


def tally(trials: Sequence[FrozenTrial]) -> Tally:
    """Count `trials` (in trial order) for `run_optuna` and the Ray backend."""
    streak, streak_open = 0, True
    for t in reversed(trials):
        if evaluated(t):
            streak_open = False
        elif streak_open and DUPLICATE in t.user_attrs:
            streak += 1
    return Tally(evaluated=sum(evaluated(t) for t in trials),
                 infeasible=sum(INFEASIBLE in t.user_attrs for t in trials),
                 repeats_in_a_row=streak)


class SearchExhausted(RuntimeError):
    """The sampler proposed only architectures already evaluated, `_MAX_REPEATS_IN_A_ROW` times
    in a row: the search stopped with fewer than the requested distinct architectures. The
    study is complete as far as it went (its results are valid)."""

    def __init__(self, evaluated: int, wanted: int, repeats: int) -> None:
        self.evaluated, self.wanted, self.repeats = evaluated, wanted, repeats
        super().__init__(
            f"search stopped: the last {repeats} proposals were all architectures already "
            f"evaluated; distinct architectures evaluated: {evaluated} of {wanted} asked for (the "
            "space may hold fewer; a random sampler or another seed may find more)")


class InfeasibleSearch(ConstraintInfeasible):
    """Only candidates that break the constraints were drawn ("constraint infeasible"; a
    `search_space.ConstraintInfeasible`, as the space's own bounded rejection loop raises)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"constraint infeasible: {limit} candidates in a row broke the "
                         "constraints; loosen --max-latency/--max-params or the space")


def verdict(trials: Sequence[FrozenTrial], n_trials: int) -> tuple[bool, Exception | None]:
    """Whether a search of `n_trials` distinct architectures should stop, and the error that
    says why it ends short (None when the count is reached or nothing stops it)."""
    now = tally(trials)
    if now.evaluated >= n_trials:
        return True, None
    if now.infeasible >= _MAX_INFEASIBLE_PER_TRIAL * n_trials:
        return True, InfeasibleSearch(_MAX_INFEASIBLE_PER_TRIAL * n_trials)
    if now.stuck:
        return True, SearchExhausted(now.evaluated, n_trials, now.repeats_in_a_row)
    return False, None


def quiet_optuna() -> None:
    """Warnings only; Optuna logs every FAIL trial with a traceback (a failed candidate,
    Ctrl-C), which the progress callback and search.py already report in one line each."""
    logging.getLogger("optuna").setLevel(logging.WARNING)
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)


def recover_zombies(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed process FAIL and re-enqueue their parameters."""
    zombies = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in zombies:
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted (resumed)")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
    return len(zombies)


def trial_cost(trial: FrozenTrial) -> float:
    """What a finished trial cost, seconds: its span in the storage (sampler, latency lookup,
    proxy, storage writes), never less than the proxy's own measurement (`proxy_seconds`)."""
    span = 0.0
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        span = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return max(span, float(trial.user_attrs.get("proxy_seconds") or 0.0))


def measured_costs(trials: Sequence[FrozenTrial], since: float) -> list[float]:
    """The costs (`trial_cost`) of the trials that trained a candidate and started at or after
    `since` (seconds since the epoch: this run's), in the order they finished. A repeat, an
    infeasible or a surplus candidate trains nothing; `RunBudget.fits` judges by these."""
    done = [t for t in trials if evaluated(t) and DUPLICATE not in t.user_attrs
            and t.datetime_complete is not None and t.datetime_start is not None
            and t.datetime_start.timestamp() >= since]
    return [trial_cost(t) for t in sorted(done, key=lambda t: t.datetime_complete)]


def run_optuna(study: optuna.Study, objective: Objective, n_trials: int,
               timeout: float | None = None, workers: int = 1,
               on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
               budget: RunBudget | None = None) -> None:
    """Optimize until `n_trials` distinct architectures are evaluated, in this process:
    `workers` threads share the study (see `optimize.processes` for worker processes). With
    a `budget` (or `timeout`: a budget of that many seconds from now, with nothing reserved
    after the trials) no trial is started that the trials measured so far say would not end
    within it (`optimize.budget`): the study is stopped instead. Raises `SearchExhausted`
    when the sampler only repeats itself, and `InfeasibleSearch` when it only draws
    candidates that break the constraints."""
    if tally(study.get_trials(deepcopy=False)).evaluated >= n_trials:
        return
    if budget is None and timeout is not None:
        budget = RunBudget(seconds=timeout, start=time.time(), after_s=0.0)
    ended: list[Exception] = []

    def in_budget(trials: Sequence[FrozenTrial]) -> bool:
        return budget is None or budget.fits(measured_costs(trials, budget.start))

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(study, trial)
        trials = study.get_trials(deepcopy=False)
        stop, why = verdict(trials, n_trials)
        if stop:
            ended.extend([why] if why else [])
            study.stop()
        elif not in_budget(trials):  # the next trial would not end in time
            study.stop()

    quiet_optuna()
    # One worker: Ctrl-C is held during storage writes (optimize/interrupt.py). With several,
    # the objective runs in threads that SIGINT cannot reach selectively; left as it was.
    guard = objective.ctrl_c if workers == 1 else None
    callbacks = [stop_when_done] + ([guard.check] if guard else [])
    with guard.installed() if guard else contextlib.nullcontext():
        while in_budget(study.get_trials(deepcopy=False)):
            try:
                study.optimize(objective, n_trials=None, n_jobs=workers,
                               callbacks=callbacks, catch=(CandidateFailed,), gc_after_trial=False)
                break
            except (UpdateFinishedTrialError, ValueError):
                # Telling a trial that another worker declared lost (no heartbeat within the
                # grace period: a stalled machine) fails; its retry evaluates the candidate.
                if not _lost_here(study, objective):
                    raise
                _log.warning("a trial of this worker was declared lost by another; continuing")
    if ended:
        raise ended[0]


def _lost_here(study: optuna.Study, objective: Objective) -> bool:
    """Whether the last trial `objective` ran here was failed as lost by another worker."""
    if objective.last_trial_id is None:
        return False
    t = study._storage.get_trial(objective.last_trial_id)
    return t.state == TrialState.FAIL and LOST in t.user_attrs


def describe_trial(trial: FrozenTrial) -> str:
    """Short outcome of a trial for the progress line."""
    if DUPLICATE in trial.user_attrs:
        return f"repeat of trial {trial.user_attrs[DUPLICATE]}, not counted ({_outcome(trial)})"
    if RUNG in trial.user_attrs:
        ua = trial.user_attrs
        return (f"promotion of trial {ua[PROMOTED_FROM]} to {ua[FIDELITY]} (rung {ua[RUNG]}), "
                f"not counted ({_outcome(trial)})")
    return _outcome(trial)


def _outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.FAIL:
        return "failed: " + str(trial.user_attrs.get("fail_reason", "error"))
    if STOPPED in trial.user_attrs:
        return "stopped early (dominated)"
    if INFEASIBLE in trial.user_attrs:
        return "infeasible: " + str(trial.user_attrs[INFEASIBLE])
    if SURPLUS in trial.user_attrs:
        return "not trained, not counted: the --trials budget was full"
    return trial.state.name.lower()
