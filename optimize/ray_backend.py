"""Ray Tune backend: `Tuner` + `OptunaSearch` on the run's own Optuna storage.

Each trial runs the Optuna backend's own evaluation, `Objective.__call__`, in a Ray worker
(`_TuneTrial` presents the proposal as a trial; constraints, duplicate reuse and Pareto early
stopping included), and requests one CPU and `--gpus-per-trial` GPUs (`trial_resources`).
The objective, its proxy and the proxy's dataset are built on the driver, on its
`--proxy-device`, and shipped to the workers; a worker given a GPU sees it as cuda:0. The
workers read the study (twins, early-stopping history) from the storage URL, so a cluster
of several nodes needs a storage every node reaches (`--storage postgresql://...`).

`OptunaSearch` asks and tells the study in `study.db`, so a finished trial is in the storage
the moment it completes, and a crashed worker only fails its own trial. The per-trial record
(architecture, latency per device, checkpoints) travels in the trial's last result with how
the evaluation ended, and is written as Optuna user attributes before the trial is told
(COMPLETE, PRUNED or FAIL, as with the Optuna backend), so the run folder looks the same.
With `--objective score`, ASHA (Li et al., MLSys 2020) stops weak trials on the scalar
reward at the proxy's checkpoints.

A proposal of an architecture the study has already evaluated never reaches a worker: the
searcher records it as the Optuna backend does (`duplicate_of`, the twin's result told to
the sampler) and asks again, so every Ray trial is a new architecture and `num_samples` is
the number still to evaluate. When the repeats in a row reach the runner's bound, the searcher
finishes and `run_ray` raises `SearchExhausted`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FixedTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_space import SearchSpace

from .objective import CandidateFailed, Objective, finished_twin, record_repeat
from .runner import STUDY_NAME, SearchExhausted, tally

__all__ = ["run_ray", "trial_resources", "ClusterError"]

_ATTRS = "pconv_attrs"  # result key carrying the trial's user attributes (JSON)
_STATE = "pconv_state"  # result key: how the evaluation ended (complete, pruned, fail)


class ClusterError(ValueError):
    """The Ray cluster cannot give a trial what it asks for (a configuration error)."""


def trial_resources(gpus_per_trial: float | None, cluster: Mapping[str, float]) -> dict[str, float]:
    """What one Ray trial requests: one CPU and `gpus_per_trial` GPUs. A fraction packs
    several trials on one GPU (0.25: four); None is 1 when `cluster` (Ray's
    `cluster_resources()`) reports GPUs, else 0. Raises `ClusterError` for a request the
    cluster can never grant (Ray would wait for it forever)."""
    gpus = float(cluster.get("GPU", 0.0))
    g = (1.0 if gpus > 0 else 0.0) if gpus_per_trial is None else float(gpus_per_trial)
    if not (math.isfinite(g) and g >= 0):
        raise ClusterError(f"--gpus-per-trial: {gpus_per_trial} must be a number >= 0")
    if g > 1 and not g.is_integer():  # Ray's rule: fractions only below one GPU
        raise ClusterError(f"--gpus-per-trial: {g} must be a whole number when above 1")
    if g > gpus:
        raise ClusterError(f"--gpus-per-trial {g:g}: the Ray cluster reports {gpus:g} GPU(s); "
                           "use 0 to train on CPUs")
    return {"cpu": 1, "gpu": g}


class _TuneTrial(FixedTrial):
    """A Tune trial as `Objective.__call__` sees it: the searcher's proposal as fixed
    parameters, the run's study (read for a finished twin and the early-stopping history),
    and intermediate scores sent to Tune for ASHA (`--objective score`). Its number is -1:
    the Optuna trial behind it is RUNNING, and `finished_twin` only looks at finished ones."""

    def __init__(self, params: dict[str, Any], study: optuna.Study) -> None:
        super().__init__(params, number=-1)
        self.study = study

    def report(self, value: float, step: int) -> None:
        from ray import tune

        tune.report({"score": value, "step": step})


def _trainable(config: dict[str, Any], objective: Objective, storage: str) -> None:
    """Evaluate one proposal with the Optuna backend's `Objective.__call__` (constraints,
    duplicate reuse, Pareto early stopping, failure) and send Tune its final result: the
    objective values, the trial's user attributes (`_ATTRS`) and how it ended (`_STATE`)."""
    from ray import tune

    trial = _TuneTrial(config, optuna.load_study(study_name=STUDY_NAME, storage=storage))
    tune.report(_final_result(objective, trial))


def _final_result(objective: Objective, trial: _TuneTrial) -> dict[str, Any]:
    values: tuple[float, ...] = (math.nan,) * len(objective.metric_names)
    state = "complete"
    try:
        out = objective(trial)
        values = tuple(out) if isinstance(out, tuple) else (float(out),)
    except optuna.TrialPruned:
        state = "pruned"
    except CandidateFailed:
        state = "fail"
    # Tune requires the metrics in every result; a trial that did not complete carries NaN
    # and its state, and the searcher tells Optuna PRUNED or FAIL (`_Search.on_trial_complete`).
    return {**dict(zip(objective.metric_names, values)), _STATE: state,
            _ATTRS: json.dumps(trial.user_attrs)}


class _Search(OptunaSearch):
    """OptunaSearch that also stores the trial's record as Optuna user attributes, and records
    repeated architectures itself instead of sending them to a worker."""

    def __init__(self, *, arch_space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arch_space = arch_space

    def suggest(self, trial_id: str) -> dict | str | None:
        while True:
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            arch = self.arch_space.to_arch(config)
            twin = finished_twin(self._ot_study, arch.arch_id, ot_trial.number)
            if twin is None:
                return config
            for key in ("arch", "arch_id", "latency_ms", "params_m"):
                ot_trial.set_user_attr(key, twin.user_attrs[key])
            record_repeat(ot_trial, twin)
            if twin.state == TrialState.COMPLETE:
                self._ot_study.tell(ot_trial, twin.values)
            else:
                self._ot_study.tell(ot_trial, state=twin.state)
            del self._ot_trials[trial_id]  # the next super().suggest asks a new trial
            if tally(self._ot_study.get_trials(deepcopy=False)).stuck:
                return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and _ATTRS in result:
            for key, value in json.loads(result[_ATTRS]).items():
                ot_trial.set_user_attr(key, value)
        state = (result or {}).get(_STATE, "complete")
        if state != "complete":  # no values: OptunaSearch tells FAIL on error, else PRUNED
            result, error = None, state == "fail"
        super().on_trial_complete(trial_id, result=result, error=error)


class _Define:
    """Define-by-run space for OptunaSearch (a class, so Ray can pickle the searcher)."""

    def __init__(self, params: dict[str, tuple[Any, ...]]) -> None:
        self.params = params

    def __call__(self, trial: optuna.Trial) -> None:
        for name, choices in self.params.items():
            trial.suggest_categorical(name, list(choices))


def run_ray(*, study: optuna.Study, storage: str, objective: Objective, n_trials: int,
            timeout: float | None, workers: int, address: str | None, seed: int,
            gpus_per_trial: float | None = None,
            on_trial: Callable[[optuna.Study, Any], None] | None = None,
            run_dir: Path | None = None) -> None:
    """Evaluate `n_trials` distinct architectures with Ray Tune, `workers` at a time, each
    trial requesting `trial_resources(gpus_per_trial, ...)`. Raises `ClusterError` before
    any trial when the cluster lacks the GPUs asked for, and `SearchExhausted` as
    `run_optuna` does."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    remaining = n_trials - tally(study.get_trials(deepcopy=False)).evaluated
    if remaining <= 0:
        return
    modes = ["max" if d == "maximize" else "min" for d in objective.directions]
    searcher = _Search(arch_space=objective.space, space=_Define(objective.space.params()),
                       metric=objective.metric_names, mode=modes,
                       sampler=study.sampler, study_name=STUDY_NAME,
                       storage=optuna.storages.RDBStorage(storage) if storage.startswith(
                           ("sqlite", "postgresql", "mysql")) else None, seed=seed)
    scheduler = None
    if objective.objective == "score":
        first = max(1, objective.proxy.budget.steps // max(objective.proxy.budget.checkpoints, 1))
        scheduler = ASHAScheduler(metric="score", mode="max", time_attr="step",
                                  max_t=objective.proxy.budget.steps, grace_period=first)

    class _Progress(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if on_trial is not None:
                last = study.get_trials(deepcopy=False)
                if last:
                    on_trial(study, last[-1])

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    resources = trial_resources(gpus_per_trial, ray.cluster_resources())
    root = (run_dir or Path(storage.removeprefix("sqlite:///")).parent).resolve()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, objective=objective, storage=storage),
                            resources),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=remaining, max_concurrent_trials=workers,
                                    time_budget_s=timeout),
        run_config=tune.RunConfig(storage_path=str(root / "ray"), name="tune", verbose=0,
                                  callbacks=[_Progress()]),
    )
    tuner.fit()
    now = tally(study.get_trials(deepcopy=False))
    if now.evaluated < n_trials and now.stuck:
        raise SearchExhausted(now.evaluated, n_trials, now.repeats_in_a_row)
