"""The search objective: one candidate = latency lookup, constraints, then the proxy.

The objective knows nothing about networks: it receives its latency tables and its proxy
(STYLE.md, "Injected, not imported"). Every trial records what it learned as Optuna user
attributes (the architecture in file form, latency per device, params, checkpoints), so
everything a user reads can be rebuilt from `study.db` alone.

Objectives:
- `pareto`: maximize proxy accuracy, minimize latency on every device (one objective per
  device). Weak candidates are stopped by `ParetoEarlyStopping` at proxy checkpoints.
- `score`: maximize the MnasNet reward ACC * (LAT / T) ** w with w = -0.07 (Tan et al.,
  CVPR 2019, soft constraint) for one device; Optuna's pruner stops weak candidates.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from search_space import ArchConfig, ConstraintInfeasible, SearchSpace, count_params

from .early_stop import History, ParetoEarlyStopping
from .interrupt import CtrlC

if TYPE_CHECKING:
    from latency_tables import LatencyPredictor
    from proxies import Proxy

__all__ = ["Objective", "Constraints", "CandidateFailed", "mnas_reward", "MNAS_W",
           "history_of", "finished_twin", "record_repeat", "STOPPED", "INFEASIBLE", "INTERRUPTED",
           "DUPLICATE", "RUNG", "FIDELITY", "PROMOTED_FROM", "rung_of", "LOST", "CLAIM", "WORKER",
           "running_twins", "SURPLUS"]

#: MnasNet's soft-constraint exponent (Tan et al. 2019, Sec. 3).
MNAS_W = -0.07
#: user-attribute flags of pruned trials: stopped by early stopping / never trained.
STOPPED, INFEASIBLE = "stopped_early", "infeasible"
#: user-attribute flag of a FAIL trial cut off by Ctrl-C or kill -9: not evaluated, re-queued.
INTERRUPTED = "interrupted"
#: user-attribute flag (with INTERRUPTED) of a trial whose worker stopped sending heartbeats
#: (killed, or its machine gone): failed by another worker and re-queued (`optimize.storage`).
LOST = "lost"
#: user attribute of a repeated proposal: the number of the trial that evaluated its architecture.
DUPLICATE = "duplicate_of"
#: user attribute of a drawn candidate while its twin question is open: "training" (this trial
#: evaluates the architecture) or "waiting" (for a running twin; `Objective._await_twin`).
CLAIM = "claim"
#: user attribute: the worker (host:pid) that ran the trial; several share a study.
WORKER = "worker"
#: user attribute of a trial not trained because the study's --trials were already evaluated
#: or being trained by other trials (`Objective._await_budget`); it does not count.
SURPLUS = "surplus"
# Seconds between two looks at a running twin: its result is reused as soon as it lands
# (a smoke trial takes ~1 s, a quick one tens of seconds; each look is one small read).
_TWIN_POLL_S = 0.25
#: user attributes of a promotion (`optimize.promote`): its rung (>= 1; a proposal is rung 0),
#: the rung's budget as the user named it, and the trial that proposed the architecture.
RUNG, FIDELITY, PROMOTED_FROM = "rung", "fidelity", "promoted_from"
#: The standard error a proxy states for its accuracy (`ProxyResult.uncertainty`).
ACCURACY_SE = "accuracy_se"


class CandidateFailed(RuntimeError):
    """The proxy failed on a candidate (NaN loss, an error in the network); trial -> FAIL."""


def mnas_reward(accuracy: float, latency_ms: float, target_ms: float) -> float:
    return accuracy * (latency_ms / target_ms) ** MNAS_W


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Hard limits checked before training (latency is known up front)."""

    max_latency_ms: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_params_m: float | None = None

    def violation(self, latency_ms: Mapping[str, float], params_m: float) -> str | None:
        for device, limit in self.max_latency_ms.items():
            if latency_ms[device] > limit:
                return f"latency {latency_ms[device]:.2f} ms on {device} > {limit} ms"
        if self.max_params_m is not None and params_m > self.max_params_m:
            return f"{params_m:.2f}M params > {self.max_params_m}M"
        return None


def rung_of(trial: FrozenTrial) -> int:
    """The rung of a trial: 0 for the search's proposals, k >= 1 for a promotion."""
    return int(trial.user_attrs.get(RUNG, 0))


def history_of(trials: Sequence[FrozenTrial]) -> list[History]:
    """Finished (COMPLETE) candidates with their checkpoint accuracies, at the search's budget
    (a promotion's checkpoints are steps of another schedule)."""
    out = []
    for t in trials:
        if t.state == TrialState.COMPLETE and "checkpoints" in t.user_attrs and not rung_of(t):
            out.append(History(latency_ms=t.user_attrs["latency_ms"],
                               checkpoints={int(s): float(a) for s, a in t.user_attrs["checkpoints"]}))
    return out


def finished_twin(study: optuna.Study, arch_id: str, number: int) -> FrozenTrial | None:
    """The trial (other than `number`) that evaluated `arch_id`: completed, stopped early or
    failed. A trial cut off by an interruption did not evaluate it (its candidate is re-queued);
    nor did a running one, so two workers that draw the same architecture at once both train.
    A promotion (another budget) is no twin."""
    for t in study.get_trials(deepcopy=False,
                              states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        ua = t.user_attrs
        if t.number == number or ua.get("arch_id") != arch_id or RUNG in ua:
            continue
        if (t.state == TrialState.COMPLETE or STOPPED in ua
                or (t.state == TrialState.FAIL and "fail_reason" in ua and INTERRUPTED not in ua)):
            return t
    return None


def running_twins(study: optuna.Study, arch_id: str, number: int) -> list[FrozenTrial]:
    """The RUNNING trials other than `number` that drew `arch_id` (promotions aside): another
    worker holds the same architecture right now."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != number and t.user_attrs.get("arch_id") == arch_id
            and RUNG not in t.user_attrs]


def record_repeat(trial: optuna.Trial, twin: FrozenTrial) -> None:
    """Store on `trial` the result its twin measured, and which trial that was (`DUPLICATE`)."""
    trial.set_user_attr(DUPLICATE, twin.number)
    for key in ("checkpoints", "tse", "accuracy", ACCURACY_SE, "fail_reason", STOPPED):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    trial.set_user_attr("proxy_seconds", 0.0)


class Objective:
    """`objective(trial)`: Optuna objective for both the `pareto` and `score` searches.

    Args:
        space: the search space (`space.suggest(trial)`).
        latency: device name -> its `latency_tables.LatencyPredictor` (`predict(arch) -> ms`;
            a `LatencyTable`, or any object with the protocol's members).
        proxy: the accuracy proxy (`proxies.Proxy`: `proxy(arch, callback=...) -> ProxyResult`).
        objective: "pareto" or "score".
        target_latency_ms: T of the MnasNet reward (score objective).
        constraints: hard limits, checked before training.
        early_stopping: the Pareto stopping rule, or None to train every candidate fully.
        budget: distinct architectures the study evaluates (--trials; see `_await_budget`).
    """

    def __init__(self, *, space: SearchSpace, latency: Mapping[str, LatencyPredictor], proxy: Proxy,
                 objective: str = "pareto", target_latency_ms: float | None = None,
                 constraints: Constraints | None = None,
                 early_stopping: ParetoEarlyStopping | None = None,
                 budget: int | None = None) -> None:
        if objective not in ("pareto", "score"):
            raise ValueError(f"objective: {objective!r} must be 'pareto' or 'score'")
        if objective == "score" and (len(latency) != 1 or not target_latency_ms):
            raise ValueError("objective 'score' needs exactly one device and --target-latency")
        self.space = space
        self.latency = dict(latency)
        self.proxy = proxy
        self.objective = objective
        self.target_latency_ms = target_latency_ms
        self.constraints = constraints or Constraints()
        self.early_stopping = early_stopping
        #: The study's --trials: with it, a trial trains only while the budget has room
        #: (`_await_budget`), so that concurrent workers evaluate exactly that many
        #: architectures; None: the caller's loop alone decides when to stop.
        self.budget = budget
        #: Ctrl-C reaches the objective only while a candidate trains (`run_optuna` installs it).
        self.ctrl_c = CtrlC()
        #: The storage id of the trial last started here (`run_optuna` asks after a lost one).
        self.last_trial_id: int | None = None

    @property
    def directions(self) -> list[str]:
        if self.objective == "score":
            return ["maximize"]
        return ["maximize"] + ["minimize"] * len(self.latency)

    @property
    def metric_names(self) -> list[str]:
        if self.objective == "score":
            return ["score"]
        return ["accuracy"] + [f"latency_ms:{d}" for d in self.latency]

    def describe(self, arch: ArchConfig) -> dict[str, Any]:
        """Latency per device (ms per image) and params (M) of `arch`: known before training."""
        return {"latency_ms": {d: float(t.predict(arch)) for d, t in self.latency.items()},
                "params_m": count_params(arch) / 1e6}

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.last_trial_id = getattr(trial, "_trial_id", None)  # a Ray trial has none
        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:
            # Ctrl-C: Optuna marks the trial FAIL; flag it (not evaluated) and queue a fully
            # drawn candidate again so that --resume evaluates it, as after kill -9.
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            if "arch" in trial.user_attrs:
                trial.study.enqueue_trial(trial.params, skip_if_exists=False)
            raise

    def _evaluate(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            arch = self.space.suggest(trial)
        except ConstraintInfeasible as e:
            trial.set_user_attr(INFEASIBLE, str(e))
            raise optuna.TrialPruned(str(e)) from None
        info = self.describe(arch)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("arch_id", arch.arch_id)
        trial.set_user_attr("latency_ms", info["latency_ms"])
        trial.set_user_attr("params_m", info["params_m"])
        why = self.constraints.violation(info["latency_ms"], info["params_m"])
        if why:
            trial.set_user_attr(INFEASIBLE, why)
            raise optuna.TrialPruned(f"infeasible: {why}")

        twin = finished_twin(trial.study, arch.arch_id, trial.number)
        if twin is None:
            twin = self._await_twin(trial, arch.arch_id)
        if twin is not None:
            return self._reuse(trial, twin)
        if self.budget is not None and not self._await_budget(trial):
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned(f"not trained: the study's {self.budget} architectures are "
                                     "evaluated")

        checkpoints: list[tuple[int, float]] = []
        history = history_of(trial.study.get_trials(deepcopy=False)) if self.early_stopping else []

        def callback(step: int, accuracy: float) -> bool:
            checkpoints.append((step, accuracy))
            if self.objective == "score":
                trial.report(self.reward(accuracy, info), step)
                return trial.should_prune()
            if self.early_stopping is None:
                return False
            return self.early_stopping.should_stop(info["latency_ms"], step, accuracy, history,
                                                   total_steps=self.proxy.budget.steps)

        with self.ctrl_c.training():
            result = self.proxy(arch, callback=callback)
        trial.set_user_attr("checkpoints", checkpoints)
        trial.set_user_attr("proxy_seconds", result.seconds)
        if result.tse is not None:
            trial.set_user_attr("tse", result.tse)
        if result.failed:
            trial.set_user_attr("fail_reason", result.reason)
            raise CandidateFailed(f"{arch.arch_id}: {result.reason}")
        accuracy = float(result.score if result.accuracy is None else result.accuracy)
        trial.set_user_attr("accuracy", accuracy)
        if result.uncertainty is not None:  # the proxy states its own standard error
            trial.set_user_attr(ACCURACY_SE, float(result.uncertainty))
        if result.stopped_early:
            trial.set_user_attr(STOPPED, True)
            raise optuna.TrialPruned(f"stopped early at step {result.steps}")
        if self.objective == "score":
            return self.reward(accuracy, info)
        return (accuracy, *info["latency_ms"].values())

    def _await_twin(self, trial: optuna.Trial, arch_id: str) -> FrozenTrial | None:
        """With several workers on one study, another may hold the same architecture right
        now. Then this trial waits for that twin's result instead of training it a second
        time, and returns the twin once it has finished (None: train it here).

        The trial's `arch_id` is already stored (announced) when this looks, so of two workers
        drawing the same architecture at once at least the second sees the first. Each marks
        its decision (`CLAIM`): "training" is final; a trial that saw an undecided or training
        twin marks "waiting". When every running twin is waiting too (both looked before either
        decided), the lowest trial number trains. A twin whose worker died is failed by the
        heartbeat check below (`optimize.storage`) and stops being one; a twin cut off by
        Ctrl-C is no twin either (`finished_twin`): then this trial trains."""
        study, claimed = trial.study, False
        while True:
            twins = running_twins(study, arch_id, trial.number)
            if all(t.user_attrs.get(CLAIM) == "waiting" and t.number > trial.number for t in twins):
                # Read after the running ones: a twin that finished in between is found here.
                twin = finished_twin(study, arch_id, trial.number)
                if twin is not None:
                    return twin
                trial.set_user_attr(CLAIM, "training")
                return None
            if not claimed:
                trial.set_user_attr(CLAIM, "waiting")
                claimed = True
            self._pause(study)

    def _pause(self, study: optuna.Study) -> None:
        """One wait of `_await_twin` / `_await_budget`: a short sleep that Ctrl-C cuts at once,
        then fail the trials of workers whose heartbeat stopped (they stop counting)."""
        with self.ctrl_c.training():  # no storage write in here: Ctrl-C acts at once
            time.sleep(_TWIN_POLL_S)
        if is_heartbeat_enabled(study._storage):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)

    def _await_budget(self, trial: optuna.Trial) -> bool:
        """Whether this trial may train without the study evaluating more than `budget`
        architectures. Concurrent workers (threads, processes, machines) each start a trial
        while the budget looks open; counting the finished evaluations and the trials with a
        lower number that train now (`CLAIM` "training", set by `_await_twin`), a trial trains
        when they leave room, gives up (False) when the finished ones fill the budget, and
        waits while the training ones might. The lowest-numbered training trial never waits,
        so no two wait on each other; a dead worker's trial stops counting once the heartbeat
        check fails it."""
        from .runner import evaluated  # runner imports this module

        study = trial.study
        while True:
            trials = study.get_trials(deepcopy=False)
            done = sum(evaluated(t) for t in trials)
            if done >= self.budget:
                return False
            ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number
                        and t.user_attrs.get(CLAIM) == "training" for t in trials)
            if done + ahead < self.budget:
                return True
            self._pause(study)

    def _reuse(self, trial: optuna.Trial, twin: FrozenTrial) -> float | tuple[float, ...]:
        """The sampler proposed an architecture again (TPE does in categorical spaces). The
        proxy is deterministic per architecture and seed, so the trial takes its twin's result
        instead of training: it is recorded (`DUPLICATE`, its parameters in the study) but
        does not count toward `--trials` (`runner.evaluated`).

        It is told to Optuna in its twin's state and with its twin's values, as an evaluation
        would be: the sampler sees one more observation of a point it already knows. This keeps
        what TPE learns as it was before repeats stopped counting; telling it PRUNED instead
        would rank a good architecture below every complete trial (Optuna's TPE splits pruned
        trials after complete ones), and FAIL would hide the proposal from the sampler. A
        sampler that keeps proposing known architectures is stopped by the runner's bound on
        repeats in a row. A twin stopped early is stopped again (the history has only grown
        since, so the rule can only find more dominators); a failed twin fails again."""
        record_repeat(trial, twin)
        if twin.state == TrialState.FAIL:
            raise CandidateFailed(f"{twin.user_attrs['arch_id']}: same architecture as trial "
                                  f"{twin.number}: {twin.user_attrs['fail_reason']}")
        if twin.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"same architecture as trial {twin.number}, stopped early")
        return twin.values[0] if self.objective == "score" else tuple(twin.values)

    def reward(self, accuracy: float, info: Mapping[str, Any]) -> float:
        """The `score` objective's MnasNet reward for `info` from `describe` (one device)."""
        (ms,) = info["latency_ms"].values()
        return mnas_reward(accuracy, ms, float(self.target_latency_ms))
