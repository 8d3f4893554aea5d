"""Ray Tune backend: `Tuner` + `OptunaSearch` on the run's own Optuna storage.

Each trial runs the same objective pieces (latency lookup, constraints, proxy) in a Ray
worker. `OptunaSearch` asks and tells the study in `study.db`, so a finished trial is in
the storage the moment it completes, and a crashed worker only fails its own trial. The
per-trial record (architecture, latency per device, checkpoints) travels in the trial's
last result and is written as Optuna user attributes before the trial is told, so the
run folder looks the same as with the Optuna backend. With `--objective score`, ASHA (Li
et al., MLSys 2020) stops weak trials on the scalar reward at the proxy's checkpoints.

A proposal of an architecture the study has already evaluated never reaches a worker: the
searcher records it as the Optuna backend does (`duplicate_of`, the twin's result told to
the sampler) and asks again, so every Ray trial is a new architecture and `num_samples` is
the number still to evaluate. When the repeats in a row reach the runner's bound, the searcher
finishes and `run_ray` raises `SearchExhausted`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_space import SearchSpace

from .objective import INFEASIBLE, Objective, finished_twin, record_repeat
from .runner import STUDY_NAME, SearchExhausted, tally

__all__ = ["run_ray"]

_ATTRS = "pconv_attrs"  # result key carrying the trial's user attributes (JSON)


def _trainable(config: dict[str, Any], objective: Objective) -> None:
    from ray import tune

    arch = objective.space.to_arch(config)
    info = objective.describe(arch)
    attrs: dict[str, Any] = {"arch": arch.to_dict(), "arch_id": arch.arch_id, **info}
    why = objective.space.violation(arch) or objective.constraints.violation(
        info["latency_ms"], info["params_m"])
    if why:
        attrs[INFEASIBLE] = why
        raise RuntimeError(f"infeasible: {why}")  # never trained; the trial is told FAIL
    checkpoints: list[tuple[int, float]] = []

    def metrics(accuracy: float, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": accuracy, "step": step,
                               **{f"latency_ms:{d}": ms for d, ms in info["latency_ms"].items()}}
        if objective.objective == "score":
            out["score"] = objective.reward(accuracy, info)
        return out

    def callback(step: int, accuracy: float) -> bool:
        checkpoints.append((step, accuracy))
        if step < objective.proxy.budget.steps:
            tune.report(metrics(accuracy, step))
        return False

    result = objective.proxy(arch, callback=callback)
    if result.failed:
        raise RuntimeError(f"{arch.arch_id}: {result.reason}")
    accuracy = float(result.score if result.accuracy is None else result.accuracy)
    attrs.update(checkpoints=checkpoints, proxy_seconds=result.seconds, accuracy=accuracy)
    tune.report({**metrics(accuracy, result.steps), _ATTRS: json.dumps(attrs)})


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
            on_trial: Callable[[optuna.Study, Any], None] | None = None,
            run_dir: Path | None = None) -> None:
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
    root = (run_dir or Path(storage.removeprefix("sqlite:///")).parent).resolve()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, objective=objective), {"cpu": 1}),
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
