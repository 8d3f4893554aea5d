"""optimize/ at unit level, with fakes for the proxy, the latency tables and the space.

The objective is injected with everything it uses (STYLE.md, "Injected, not imported"), so
failures, constraints, Pareto early stopping and the score objective are checked here in
milliseconds on in-memory studies; the report and selection rules are checked on hand-made
points and fronts (STYLE.md, "Compute, then draw"). The CLI end to end is in
test_search_cli.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from latency_tables import LatencyTable
from optimize import (
    MNAS_W,
    Candidate,
    Constraints,
    Front,
    History,
    Objective,
    ParetoEarlyStopping,
    collect,
    evaluated,
    fronts,
    hypervolume,
    mnas_reward,
    pareto_mask,
    recover_zombies,
    run_optuna,
    select,
    write_outputs,
)
from optimize.objective import (
    DUPLICATE,
    FIDELITY,
    INFEASIBLE,
    INTERRUPTED,
    PROMOTED_FROM,
    RUNG,
    STOPPED,
    SURPLUS,
    finished_twin,
    history_of,
)
from optimize.promote import (
    Entry,
    choose,
    crowding_distance,
    nondominated_ranks,
    parse_rungs,
    promote,
    promotion_order,
)
from optimize.report import RungCost, accuracy_error, rung_costs, tie_note, ties_with_best
from optimize.runner import InfeasibleSearch, SearchExhausted, Tally, describe_trial, tally
from proxies import BUDGETS, ProxyResult
from search_space import PRESETS, ArchConfig, SearchSpace

optuna.logging.set_verbosity(optuna.logging.ERROR)

T0 = PRESETS["fasternet_t0"]


def variant(i: int) -> ArchConfig:
    """Distinct small architectures (distinct arch_ids) for hand-made studies and fronts."""
    return dataclasses.replace(T0, feature_dim=64 + 8 * i)


# ------------------------------------------------------------------------------ fakes
class FakeProxy:
    """`proxy(arch, callback=...)` with scripted accuracy curves; counts its calls.

    `curve(arch)` gives step -> accuracy at the smoke budget's checkpoints (2 and 4); like
    `ShortTrain`, a True from the callback stops training except at the last step.
    `fail(arch)` returns a failure reason ("" for none).
    """

    name = "fake"
    seed = 0
    budget = BUDGETS["smoke"]

    def __init__(self, curve: Callable[[ArchConfig], Mapping[int, float]],
                 fail: Callable[[ArchConfig], str] = lambda arch: "") -> None:
        self.curve, self.fail = curve, fail
        self.calls: list[ArchConfig] = []
        self.last_step: dict[str, int] = {}

    def __call__(self, arch: ArchConfig, *, callback=None) -> ProxyResult:
        self.calls.append(arch)
        reason = self.fail(arch)
        if reason:
            return ProxyResult(proxy=self.name, arch_id=arch.arch_id, score=-math.inf, failed=True,
                               reason=reason, seconds=0.01)
        curve = dict(self.curve(arch))
        steps = sorted(curve)
        seen: list[tuple[int, float]] = []
        for step in steps:
            seen.append((step, curve[step]))
            self.last_step[arch.arch_id] = step
            stop = callback is not None and callback(step, curve[step])
            if stop and step < steps[-1]:
                return ProxyResult(proxy=self.name, arch_id=arch.arch_id, score=curve[step],
                                   accuracy=curve[step], steps=step, checkpoints=tuple(seen),
                                   stopped_early=True, seconds=0.01)
        acc = curve[steps[-1]]
        return ProxyResult(proxy=self.name, arch_id=arch.arch_id, score=acc, accuracy=acc,
                           steps=steps[-1], checkpoints=tuple(seen), seconds=0.01)


class FakeTable:
    """Latency predictor (`latency_tables.LatencyPredictor`, no table behind it): ms from a
    mapping arch_id -> ms, or from a function."""

    name = "fake"

    def __init__(self, ms: Mapping[str, float] | Callable[[ArchConfig], float]) -> None:
        self.ms = ms

    def predict(self, arch: ArchConfig) -> float:
        return self.ms(arch) if callable(self.ms) else self.ms[arch.arch_id]

    def check_coverage(self, space: SearchSpace) -> None:
        """Covers every space (a function) or none beyond its mapping (not checked here)."""

    def provenance(self) -> dict[str, str]:
        return {"source": "fake"}

    def provenance_note(self) -> str:
        return "latency table 'fake' is a test double"


class ListSpace:
    """Stand-in for SearchSpace: trial parameter `i` picks one of fixed architectures."""

    def __init__(self, archs: Sequence[ArchConfig]) -> None:
        self.archs = list(archs)

    def suggest(self, trial: optuna.Trial) -> ArchConfig:
        return self.archs[trial.suggest_int("i", 0, len(self.archs) - 1)]


def flat(acc: float) -> dict[int, float]:
    """The same accuracy at both smoke checkpoints."""
    return {2: acc, 4: acc}


def wobbly_accuracy(arch: ArchConfig) -> dict[int, float]:
    """A deterministic, architecture-dependent curve for runs over the real space."""
    acc = 0.1 + (sum(arch.widths) * 7 + sum(arch.depths)) % 50 / 100
    return {2: acc / 2, 4: acc}


def study(directions: Sequence[str], seed: int = 0, pruner=None) -> optuna.Study:
    return optuna.create_study(directions=list(directions), pruner=pruner,
                               sampler=optuna.samplers.RandomSampler(seed=seed))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.default()


@pytest.fixture(scope="module")
def epyc() -> LatencyTable:
    return LatencyTable.load("amd-epyc")


# --------------------------------------------------------------------- failing candidates
def test_failing_candidate_is_recorded_and_search_goes_on(space):
    proxy = FakeProxy(wobbly_accuracy,
                      fail=lambda arch: "non-finite loss at step 3" if arch.act == "relu" else "")
    obj = Objective(space=space, latency={"fake": FakeTable(lambda a: sum(a.widths) / 100)},
                    proxy=proxy)
    s = study(obj.directions)
    run_optuna(s, obj, n_trials=8)

    trials = s.get_trials()
    assert sum(evaluated(t) for t in trials) == 8
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert failed and complete, "seed 0 should draw both activations in 8 trials"
    for t in failed:
        assert ArchConfig.from_dict(t.user_attrs["arch"]).act == "relu"
        assert t.user_attrs["fail_reason"] == "non-finite loss at step 3"
    for t in complete:
        assert ArchConfig.from_dict(t.user_attrs["arch"]).act == "gelu"
        assert "fail_reason" not in t.user_attrs
    assert len(proxy.calls) == 8
    # the report states why
    reasons = {c.number: c.reason for c in collect(s) if c.state == "fail"}
    assert reasons == {t.number: "non-finite loss at step 3" for t in failed}


# ----------------------------------------------------------------------------- constraints
def test_infeasible_candidates_are_never_trained_and_do_not_count(space, epyc):
    limit = 35.0  # ms on amd-epyc: T0 (~16 ms) is well within, the space reaches > 100 ms
    proxy = FakeProxy(wobbly_accuracy)
    obj = Objective(space=space, latency={"amd-epyc": epyc}, proxy=proxy,
                    constraints=Constraints(max_latency_ms={"amd-epyc": limit}))
    s = study(obj.directions)
    run_optuna(s, obj, n_trials=4)

    trials = s.get_trials()
    infeasible = [t for t in trials if INFEASIBLE in t.user_attrs]
    assert infeasible, "the limit should reject some of the random draws"
    for t in infeasible:
        assert t.state == TrialState.PRUNED and not evaluated(t)
        assert t.user_attrs["latency_ms"]["amd-epyc"] > limit
        assert "amd-epyc" in t.user_attrs[INFEASIBLE]
        assert "checkpoints" not in t.user_attrs
    assert sum(evaluated(t) for t in trials) == 4
    assert len(proxy.calls) == 4
    assert all(epyc.predict(arch) <= limit for arch in proxy.calls)


def test_params_constraint_is_checked_before_training(space):
    proxy = FakeProxy(wobbly_accuracy)
    obj = Objective(space=space, latency={"fake": FakeTable(lambda a: 1.0)}, proxy=proxy,
                    constraints=Constraints(max_params_m=8.0))
    s = study(obj.directions, seed=1)
    run_optuna(s, obj, n_trials=3)
    trained = [t for t in s.get_trials() if evaluated(t)]
    assert len(trained) == 3 and all(t.user_attrs["params_m"] <= 8.0 for t in trained)
    assert any(INFEASIBLE in t.user_attrs for t in s.get_trials())


def test_impossible_latency_constraint_ends_with_constraint_infeasible(space, epyc):
    proxy = FakeProxy(wobbly_accuracy)
    obj = Objective(space=space, latency={"amd-epyc": epyc}, proxy=proxy,
                    constraints=Constraints(max_latency_ms={"amd-epyc": 0.01}))
    s = study(obj.directions)
    # the timeout only guards against a hang: a run that times out returns without raising
    with pytest.raises(InfeasibleSearch, match="constraint infeasible"):
        run_optuna(s, obj, n_trials=1, timeout=60)
    assert proxy.calls == []


def test_impossible_space_constraint_ends_with_constraint_infeasible():
    tiny = SearchSpace.from_dict({"stages": 2, "widths": [[8, 16], [16, 32]], "depths": [[1], [1]],
                                  "constraints": {"max_params_m": 0.001}})
    proxy = FakeProxy(wobbly_accuracy)
    obj = Objective(space=tiny, latency={"fake": FakeTable(lambda a: 1.0)}, proxy=proxy)
    s = study(obj.directions)
    with pytest.raises(InfeasibleSearch, match="constraint infeasible"):
        run_optuna(s, obj, n_trials=1, timeout=60)
    assert proxy.calls == []
    assert all(t.state == TrialState.PRUNED and INFEASIBLE in t.user_attrs for t in s.get_trials())


def test_constraints_violation_messages():
    c = Constraints(max_latency_ms={"a": 10.0, "b": 5.0}, max_params_m=2.0)
    assert c.violation({"a": 10.0, "b": 5.0}, 2.0) is None
    assert "on b" in c.violation({"a": 1.0, "b": 5.5}, 1.0)
    assert "params" in c.violation({"a": 1.0, "b": 1.0}, 2.5)
    assert Constraints().violation({"a": 1e9}, 1e9) is None


# ------------------------------------------------------------------- Pareto early stopping
X = {"cpu": 10.0, "gpu": 2.0}  # the candidate's latency


def rival(cpu: float, gpu: float, **acc: float) -> History:
    return History(latency_ms={"cpu": cpu, "gpu": gpu},
                   checkpoints={int(k.removeprefix("s")): v for k, v in acc.items()})


def test_stop_when_enough_faster_and_clearly_more_accurate_rivals():
    rule = ParetoEarlyStopping(margin=0.02, min_dominators=2)
    history = [rival(9.0, 2.0, s2=0.60), rival(10.0, 1.5, s2=0.55)]  # equal latency counts
    assert rule.dominators(X, 2, 0.50, history) == 2
    assert rule.should_stop(X, 2, 0.50, history)


def test_one_dominator_is_not_enough_unless_asked():
    history = [rival(9.0, 2.0, s2=0.60)]
    assert not ParetoEarlyStopping(margin=0.02, min_dominators=2).should_stop(X, 2, 0.50, history)
    assert ParetoEarlyStopping(margin=0.02, min_dominators=1).should_stop(X, 2, 0.50, history)


@pytest.mark.parametrize("other, why", [
    (rival(9.0, 2.1, s2=0.90), "slower on gpu"),
    (rival(10.5, 1.0, s2=0.90), "slower on cpu"),
    (History(latency_ms={"cpu": 1.0}, checkpoints={2: 0.90}), "no gpu latency"),
    (rival(9.0, 2.0, s2=0.515), "within the margin"),
    (rival(9.0, 2.0, s4=0.90), "lacks checkpoint 2"),
])
def test_rival_that_does_not_count(other, why):
    rule = ParetoEarlyStopping(margin=0.02, min_dominators=1)
    good = rival(9.0, 2.0, s2=0.60)
    assert rule.dominators(X, 2, 0.50, [good, other]) == 1, why
    assert not rule.should_stop(X, 2, 0.50, [other]), why


def test_margin_is_absolute_accuracy():
    history = [rival(9.0, 2.0, s2=0.56)]
    assert ParetoEarlyStopping(margin=0.05, min_dominators=1).should_stop(X, 2, 0.50, history)
    assert not ParetoEarlyStopping(margin=0.07, min_dominators=1).should_stop(X, 2, 0.50, history)


def test_no_stop_in_the_grace_period():
    history = [rival(9.0, 2.0, s2=0.90)]
    rule = ParetoEarlyStopping(margin=0.02, min_dominators=1)  # grace: half the budget
    assert not rule.should_stop(X, 2, 0.50, history, total_steps=8)  # step 2 of 8
    assert rule.should_stop(X, 2, 0.50, history, total_steps=4)  # step 2 of 4
    assert ParetoEarlyStopping(margin=0.02, min_dominators=1, min_fraction=0.25).should_stop(
        X, 2, 0.50, history, total_steps=8)


def test_objective_passes_the_budget_to_the_grace_period():
    s, proxy, archs = early_stopping_setup(ParetoEarlyStopping(margin=0.02, min_dominators=2,
                                                               min_fraction=0.75))
    # Step 2 of the smoke budget's 4 is inside a 75 % grace period: nothing stops.
    assert all(t.state == TrialState.COMPLETE for t in s.get_trials())
    assert proxy.last_step[archs[2].arch_id] == 4


@pytest.mark.parametrize("kwargs", [{"margin": -0.01}, {"margin": 1.0}, {"min_dominators": 0},
                                    {"min_fraction": 1.5}])
def test_stopping_rule_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ParetoEarlyStopping(**kwargs)


def early_stopping_setup(early_stopping: ParetoEarlyStopping | None):
    """Two fast accurate candidates, then a slow weak one, a slow strong one, a fast weak one."""
    archs = [variant(i) for i in range(5)]
    ms = [5.0, 6.0, 20.0, 20.0, 1.0]
    acc = [flat(0.8), flat(0.85), {2: 0.3, 4: 0.9}, flat(0.9), flat(0.3)]
    by_id = {a.arch_id: (m, c) for a, m, c in zip(archs, ms, acc)}
    proxy = FakeProxy(lambda a: by_id[a.arch_id][1])
    obj = Objective(space=ListSpace(archs), proxy=proxy, early_stopping=early_stopping,
                    latency={"dev": FakeTable({k: v[0] for k, v in by_id.items()})})
    s = study(obj.directions)
    for i in range(5):
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=5)
    return s, proxy, archs


def test_objective_stops_a_clearly_dominated_candidate():
    s, proxy, archs = early_stopping_setup(ParetoEarlyStopping(margin=0.02, min_dominators=2))
    trials = s.get_trials()
    assert len(trials) == 5
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.COMPLETE, TrialState.COMPLETE]
    stopped = trials[2]
    assert stopped.user_attrs[STOPPED] is True and evaluated(stopped)
    assert [tuple(c) for c in stopped.user_attrs["checkpoints"]] == [(2, 0.3)]
    assert stopped.user_attrs["accuracy"] == 0.3
    assert proxy.last_step[archs[2].arch_id] == 2  # never trained to step 4
    assert proxy.last_step[archs[3].arch_id] == 4
    assert [c.state for c in collect(s)][2] == "stopped_early"


def test_without_early_stopping_every_candidate_trains_fully():
    s, proxy, archs = early_stopping_setup(None)
    assert all(t.state == TrialState.COMPLETE for t in s.get_trials())
    assert proxy.last_step[archs[2].arch_id] == 4


# -------------------------------------------------------------------------- score objective
def test_mnas_reward_formula():
    assert MNAS_W == -0.07
    assert mnas_reward(0.6, 20.0, 20.0) == pytest.approx(0.6)
    # 0.6 * 2 ** -0.07 = 0.6 * exp(-0.07 ln 2), worked out by hand
    assert mnas_reward(0.6, 40.0, 20.0) == pytest.approx(0.5715828, abs=1e-6)
    assert mnas_reward(0.6, 10.0, 20.0) == pytest.approx(0.6 * 0.5 ** -0.07)
    assert mnas_reward(0.6, 10.0, 20.0) > 0.6 > mnas_reward(0.6, 40.0, 20.0)


class PruneAll(optuna.pruners.BasePruner):
    """Prunes at the first report; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        self.seen.append((step, trial.intermediate_values[step]))
        return True


def score_objective(proxy: FakeProxy, ms: float = 40.0) -> Objective:
    return Objective(space=ListSpace([T0]), latency={"dev": FakeTable(lambda a: ms)}, proxy=proxy,
                     objective="score", target_latency_ms=20.0)


def test_score_objective_returns_the_mnas_reward():
    proxy = FakeProxy(lambda a: {2: 0.4, 4: 0.6})
    obj = score_objective(proxy)
    assert obj.directions == ["maximize"] and obj.metric_names == ["score"]
    s = study(obj.directions, pruner=optuna.pruners.NopPruner())
    run_optuna(s, obj, n_trials=1)
    (t,) = s.get_trials()
    assert t.state == TrialState.COMPLETE
    assert t.value == pytest.approx(0.6 * 2 ** -0.07)
    assert t.user_attrs["accuracy"] == 0.6
    assert t.intermediate_values == pytest.approx({2: 0.4 * 2 ** -0.07, 4: 0.6 * 2 ** -0.07})


def test_score_objective_uses_the_study_pruner():
    proxy = FakeProxy(lambda a: {2: 0.4, 4: 0.6})
    pruner = PruneAll()
    s = study(["maximize"], pruner=pruner)
    run_optuna(s, score_objective(proxy), n_trials=1)
    (t,) = s.get_trials()
    assert pruner.seen == [(2, pytest.approx(0.4 * 2 ** -0.07))]
    assert t.state == TrialState.PRUNED and t.user_attrs[STOPPED] is True and evaluated(t)
    assert proxy.last_step[T0.arch_id] == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "score"}, "target"),
    ({"objective": "score", "target_latency_ms": 10.0, "two_devices": True}, "one device"),
    ({"objective": "accuracy"}, "pareto"),
])
def test_objective_rejects_bad_settings(kwargs, match):
    latency = {"a": FakeTable(lambda a: 1.0)}
    if kwargs.pop("two_devices", False):
        latency["b"] = FakeTable(lambda a: 1.0)
    with pytest.raises(ValueError, match=match):
        Objective(space=ListSpace([T0]), latency=latency, proxy=FakeProxy(lambda a: flat(0.5)), **kwargs)


def test_pareto_objective_values_are_accuracy_then_latency_per_device():
    archs = [variant(0)]
    obj = Objective(space=ListSpace(archs), proxy=FakeProxy(lambda a: flat(0.7)),
                    latency={"a": FakeTable(lambda a: 3.0), "b": FakeTable(lambda a: 9.0)})
    assert obj.directions == ["maximize", "minimize", "minimize"]
    assert obj.metric_names == ["accuracy", "latency_ms:a", "latency_ms:b"]
    s = study(obj.directions)
    run_optuna(s, obj, n_trials=1)
    (t,) = s.get_trials()
    assert t.values == [0.7, 3.0, 9.0]
    assert t.user_attrs["latency_ms"] == {"a": 3.0, "b": 9.0}
    assert ArchConfig.from_dict(t.user_attrs["arch"]) == archs[0]
    assert t.user_attrs["arch_id"] == archs[0].arch_id


# ---------------------------------------------------------------------- runner bookkeeping
def test_evaluated_counts_trained_and_failed_trials_only():
    s = study(["maximize"])

    def add(state: TrialState, **attrs) -> optuna.trial.FrozenTrial:
        t = optuna.trial.create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                      user_attrs=attrs)
        s.add_trial(t)
        return s.get_trials()[-1]

    assert evaluated(add(TrialState.COMPLETE))
    assert evaluated(add(TrialState.FAIL, fail_reason="nan"))
    assert evaluated(add(TrialState.PRUNED, **{STOPPED: True}))
    assert not evaluated(add(TrialState.PRUNED, **{INFEASIBLE: "too slow"}))
    assert not evaluated(add(TrialState.FAIL, **{INTERRUPTED: True, "fail_reason": "interrupted"}))


def test_recover_zombies_fails_and_requeues_running_trials():
    s = study(["maximize"])
    t = s.ask({"i": optuna.distributions.IntDistribution(0, 9)})
    params = t.params
    assert recover_zombies(s) == 1
    (z,) = s.get_trials(states=(TrialState.FAIL,))
    assert z.user_attrs["fail_reason"] == "interrupted (resumed)" and not evaluated(z)
    (w,) = s.get_trials(states=(TrialState.WAITING,))
    assert w.system_attrs.get("fixed_params") == params
    assert recover_zombies(s) == 0


def test_ctrl_c_requeues_the_interrupted_candidate():
    archs = [variant(i) for i in range(6)]
    interrupt = {archs[2].arch_id}

    def curve(arch: ArchConfig) -> dict[int, float]:
        if arch.arch_id in interrupt:
            interrupt.clear()  # only the first time
            raise KeyboardInterrupt
        return flat(0.5)

    proxy = FakeProxy(curve)
    obj = Objective(space=ListSpace(archs), proxy=proxy,
                    latency={"d": FakeTable(lambda a: float(a.feature_dim))})
    s = study(obj.directions)
    for i in range(4):
        s.enqueue_trial({"i": i})
    with pytest.raises(KeyboardInterrupt):
        run_optuna(s, obj, n_trials=4)
    cut = s.get_trials()[2]
    assert cut.state == TrialState.FAIL and cut.user_attrs[INTERRUPTED] and not evaluated(cut)
    assert [t.state for t in s.get_trials()[:2]] == [TrialState.COMPLETE] * 2

    run_optuna(s, obj, n_trials=4)  # the resume
    done = [t for t in s.get_trials() if evaluated(t)]
    assert len(done) == 4 and all(t.state == TrialState.COMPLETE for t in done)
    assert sorted(t.params["i"] for t in done) == [0, 1, 2, 3]


def test_run_optuna_continues_to_the_requested_count():
    archs = [variant(i) for i in range(6)]
    proxy = FakeProxy(lambda a: flat(0.5))
    obj = Objective(space=ListSpace(archs), proxy=proxy,
                    latency={"d": FakeTable(lambda a: float(a.feature_dim))})
    s = study(obj.directions)
    run_optuna(s, obj, n_trials=2)
    run_optuna(s, obj, n_trials=5)  # a resumed run counts what is already there
    run_optuna(s, obj, n_trials=3)  # nothing to do
    trials = s.get_trials()
    assert sum(evaluated(t) for t in trials) == 5
    # the proxy runs once per trained trial; a repeated architecture reuses its twin's result
    assert len(proxy.calls) == sum(evaluated(t) and "duplicate_of" not in t.user_attrs for t in trials)


def test_repeated_architecture_is_recorded_but_not_trained_nor_counted():
    archs = [variant(i) for i in range(3)]
    curves = {archs[0].arch_id: flat(0.9), archs[1].arch_id: {2: 0.1, 4: 0.1},
              archs[2].arch_id: flat(0.8)}
    proxy = FakeProxy(lambda a: curves[a.arch_id])
    obj = Objective(space=ListSpace(archs), proxy=proxy, early_stopping=ParetoEarlyStopping(min_dominators=1),
                    latency={"d": FakeTable(lambda a: 1.0)})
    s = study(obj.directions)
    for i in (0, 1, 0, 1, 2):
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=3)
    t = s.get_trials()
    assert len(t) == 5 and tally(t) == Tally(evaluated=3, infeasible=0, repeats_in_a_row=0)
    assert [a.arch_id for a in proxy.calls] == [archs[0].arch_id, archs[1].arch_id, archs[2].arch_id]
    assert [evaluated(x) for x in t] == [True, True, False, False, True]
    # the repeat keeps its proposal and its twin's result, and tells the sampler the twin's values
    assert t[2].params == {"i": 0} and t[2].user_attrs["arch_id"] == archs[0].arch_id
    assert t[2].state == TrialState.COMPLETE and t[2].values == t[0].values
    assert t[2].user_attrs[DUPLICATE] == 0 and t[2].user_attrs["proxy_seconds"] == 0.0
    assert t[2].user_attrs["checkpoints"] == t[0].user_attrs["checkpoints"]
    assert t[1].state == TrialState.PRUNED and STOPPED in t[1].user_attrs  # dominated by trial 0
    assert t[3].state == TrialState.PRUNED and t[3].user_attrs[DUPLICATE] == 1
    assert STOPPED in t[3].user_attrs
    assert describe_trial(t[3]) == "repeat of trial 1, not counted (stopped early (dominated))"


def test_trials_counts_distinct_architectures():
    """`n_trials` = distinct architectures: repeats before and between them do not count."""
    archs = [variant(i) for i in range(6)]
    proxy = FakeProxy(lambda a: flat(0.5))
    obj = Objective(space=ListSpace(archs), proxy=proxy,
                    latency={"d": FakeTable(lambda a: float(a.feature_dim))})
    s = study(obj.directions)
    for i in (0, 0, 0, 1, 0, 1, 2, 2):
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=4)  # the fourth comes from the random sampler
    t = s.get_trials()
    assert tally(t).evaluated == 4 and len(proxy.calls) == 4
    assert len({a.arch_id for a in proxy.calls}) == 4
    assert [x.user_attrs.get(DUPLICATE) for x in t[:8]] == [None, 0, 0, None, 0, 3, None, 6]
    assert all(not evaluated(x) for x in t if DUPLICATE in x.user_attrs)


def test_repeat_of_a_failed_architecture_fails_without_training():
    archs = [variant(i) for i in range(2)]
    proxy = FakeProxy(lambda a: flat(0.5), fail=lambda a: "nan loss" if a == archs[0] else "")
    obj = Objective(space=ListSpace(archs), proxy=proxy, latency={"d": FakeTable(lambda a: 1.0)})
    s = study(obj.directions)
    for i in (0, 0, 1):
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=2)
    t = s.get_trials()
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert t[1].user_attrs[DUPLICATE] == 0 and t[1].user_attrs["fail_reason"] == "nan loss"
    assert len(proxy.calls) == 2 and not evaluated(t[1])


def test_interrupted_trial_is_no_twin():
    """A trial cut off by Ctrl-C evaluated nothing: its re-queued candidate trains."""
    s = study(["maximize", "minimize"])
    s.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={
        "arch_id": "x", INTERRUPTED: True, "fail_reason": "interrupted (Ctrl-C)"}))
    s.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={
        "arch_id": "x", INFEASIBLE: "too slow"}))
    assert finished_twin(s, "x", number=5) is None
    s.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.5, 1.0],
                                          user_attrs={"arch_id": "x"}))
    assert finished_twin(s, "x", number=5).number == 2
    assert finished_twin(s, "x", number=2) is None  # not its own twin


def test_a_sampler_stuck_on_known_architectures_is_stopped():
    """A space of 2 architectures and --trials 5: the random sampler can only repeat itself."""
    archs = [variant(i) for i in range(2)]
    proxy = FakeProxy(lambda a: flat(0.5))
    obj = Objective(space=ListSpace(archs), proxy=proxy, latency={"d": FakeTable(lambda a: 1.0)})
    s = study(obj.directions)
    # the timeout only guards against a hang: a run that times out returns without raising
    with pytest.raises(SearchExhausted, match="distinct architectures evaluated: 2 of 5 asked") as e:
        run_optuna(s, obj, n_trials=5, timeout=60)
    assert "\n" not in str(e.value) and "the last 100 proposals were all" in str(e.value)
    t = s.get_trials()
    assert len(proxy.calls) == 2 and tally(t) == Tally(evaluated=2, infeasible=0, repeats_in_a_row=100)
    assert (e.value.evaluated, e.value.wanted, e.value.repeats) == (2, 5, 100)
    assert sum(DUPLICATE in x.user_attrs for x in t) == len(t) - 2


def test_the_bound_counts_repeats_in_a_row_only(monkeypatch):
    monkeypatch.setattr("optimize.runner._MAX_REPEATS_IN_A_ROW", 3)
    archs = [variant(i) for i in range(3)]
    proxy = FakeProxy(lambda a: flat(0.5))
    obj = Objective(space=ListSpace(archs), proxy=proxy, latency={"d": FakeTable(lambda a: 1.0)})
    s = study(obj.directions)
    for i in (0, 0, 0, 1, 1, 0, 2):  # 2 repeats, a new one, 2 repeats, a new one
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=3)
    assert tally(s.get_trials()).evaluated == 3 and len(s.get_trials()) == 7

    s.enqueue_trial({"i": 1})  # 3 repeats in a row: stopped, even when resumed
    with pytest.raises(SearchExhausted, match="evaluated: 3 of 4 asked for"):
        run_optuna(s, obj, n_trials=4, timeout=60)
    assert len(s.get_trials()) == 10 and len(proxy.calls) == 3


def test_ray_searcher_records_repeats_without_a_worker(monkeypatch):
    """The Ray backend's searcher answers a repeated proposal itself and asks again, so no
    worker trains it and every Ray trial is a new architecture; stuck, it finishes."""
    pytest.importorskip("ray.tune")
    from ray.tune.search import Searcher

    from optimize.ray_backend import _ATTRS, _Define, _Search

    monkeypatch.setattr("optimize.runner._MAX_REPEATS_IN_A_ROW", 4)
    two = SearchSpace.from_dict({"stages": 2, "widths": [[16], [32]], "depths": [[1], [1]],
                                 "act": ["gelu", "relu"]})
    searcher = _Search(arch_space=two, space=_Define(two.params()), metric=["accuracy", "latency_ms:d"],
                       mode=["max", "min"], sampler=optuna.samplers.RandomSampler(seed=0),
                       study_name="pconv-nas", seed=0)
    finished = {}
    for n in range(2):  # both architectures evaluated by (pretend) workers
        config = searcher.suggest(f"t{n}")
        assert config != Searcher.FINISHED
        arch = two.to_arch(config)
        assert arch.arch_id not in finished, "a repeat reached a worker"
        finished[arch.arch_id] = 0.5 + n / 10
        attrs = {"arch": arch.to_dict(), "arch_id": arch.arch_id, "latency_ms": {"d": 1.0 + n},
                 "params_m": 0.1, "accuracy": finished[arch.arch_id], "checkpoints": [[4, 0.5]]}
        searcher.on_trial_complete(f"t{n}", {"accuracy": finished[arch.arch_id],
                                             "latency_ms:d": 1.0 + n, _ATTRS: json.dumps(attrs)})
    assert searcher.suggest("t2") == Searcher.FINISHED
    trials = searcher._ot_study.get_trials()
    assert tally(trials) == Tally(evaluated=2, infeasible=0, repeats_in_a_row=4)
    for t in trials[2:]:
        twin = trials[t.user_attrs[DUPLICATE]]
        assert t.state == TrialState.COMPLETE and t.values == twin.values
        assert t.user_attrs["arch_id"] == twin.user_attrs["arch_id"]
        assert t.user_attrs["accuracy"] == finished[t.user_attrs["arch_id"]]


# ---------------------------------------------------------------- multi-fidelity promotion
def test_promotion_order_is_rank_then_crowding():
    # (ms, acc): rank 0 = A, B, C, D; rank 1 = E, F (E beaten by B, F by C)
    pts = {"A": (1, 0.5), "B": (2, 0.6), "C": (3, 0.65), "D": (10, 0.9), "E": (2, 0.4), "F": (5, 0.5)}
    names = list(pts)
    lat, acc = [pts[n][0] for n in names], [pts[n][1] for n in names]
    assert nondominated_ranks(acc, lat) == [0, 0, 0, 0, 1, 1]
    crowd = crowding_distance(acc, lat, [0, 1, 2, 3])
    assert crowd[0] == crowd[3] == math.inf  # the ends of the front
    # B's neighbours A, C: 0.15/0.5 + 2/9; C's neighbours B, D: 0.3/0.5 + 8/9 (ranges of the pool)
    assert crowd[1] == pytest.approx(0.3 + 2 / 9) and crowd[2] == pytest.approx(0.6 + 8 / 9)
    assert [names[i] for i in promotion_order(acc, lat)] == ["A", "D", "C", "B", "E", "F"]

    pool = [Entry(n, pts[n][1], {"a": pts[n][0], "b": 20.0 - pts[n][0]}) for n in names]
    assert choose(pool, ["a"], eta=3) == ["A", "D"]  # ceil(6 / 3)
    assert choose(pool, ["a"], eta=2) == ["A", "D", "C"]
    assert choose(pool, ["a"], eta=6) == ["A"]
    # two devices take turns: on b (latency reversed) D is fastest and first, A is next
    assert choose(pool, ["a", "b"], eta=2) == ["A", "D", "C"]


@pytest.mark.parametrize(("spec", "rungs"), [
    ("quick,full", ["quick", "full"]),
    ("smoke,smoke,steps=8", ["smoke", "smoke,steps=8"]),
    ("steps=64;steps=640,subset=40960", ["steps=64", "steps=640,subset=40960"]),
])
def test_parse_rungs(spec, rungs):
    assert parse_rungs(spec) == rungs


# (ms, quick accuracy, full accuracy) of six architectures: at quick the front is 0, 1, 3, 5
PROMO = [(1.0, 0.30, 0.35), (2.0, 0.50, 0.70), (3.0, 0.40, 0.45), (4.0, 0.60, 0.75),
         (5.0, 0.55, 0.60), (6.0, 0.70, 0.80)]
PROMO_ARCHS = [variant(i) for i in range(len(PROMO))]


def promo_setup(interrupt: str | None = None) -> tuple[optuna.Study, Objective, dict[int, FakeProxy]]:
    """Six architectures searched at rung 0 ("smoke"), the proxy of rung 1 ("full") gives
    each its full accuracy; `interrupt`: the arch_id whose first promotion is cut by Ctrl-C."""
    by_id = {a.arch_id: p for a, p in zip(PROMO_ARCHS, PROMO)}
    cut = {interrupt} if interrupt else set()

    def full(arch: ArchConfig) -> dict[int, float]:
        if arch.arch_id in cut:
            cut.clear()
            raise KeyboardInterrupt
        return flat(by_id[arch.arch_id][2])

    proxies = {1: FakeProxy(full)}
    obj = Objective(space=ListSpace(PROMO_ARCHS), proxy=FakeProxy(lambda a: flat(by_id[a.arch_id][1])),
                    latency={"d": FakeTable(lambda a: by_id[a.arch_id][0])})
    s = study(obj.directions)
    for i in range(len(PROMO)):
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=len(PROMO))
    return s, obj, proxies


def test_promotion_keeps_the_best_third_then_settles_the_front():
    s, obj, proxies = promo_setup()
    seen: list[int] = []
    n = promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3,
                on_trial=lambda st, t: seen.append(t.number))
    trials = s.get_trials()
    # eta 3: ceil(6/3) = 2 promoted, the two ends of the quick front (infinite crowding): 0 and 5;
    # then the front (highest fidelity reached) holds 1 and 3 at quick: promoted too
    promoted = [PROMO_ARCHS.index(a) for a in proxies[1].calls]
    assert promoted == [0, 5, 1, 3] and n == 4 and seen == [6, 7, 8, 9]
    assert tally(trials).evaluated == 6 and not any(evaluated(t) for t in trials[6:])
    for t in trials[6:]:
        assert t.state == TrialState.COMPLETE and t.user_attrs[RUNG] == 1
        assert t.user_attrs[FIDELITY] == "full" and trials[t.user_attrs[PROMOTED_FROM]].params == t.params
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["latency_ms"]["d"]]
    assert describe_trial(trials[6]) == "promotion of trial 0 to full (rung 1), not counted (complete)"

    (f,) = fronts(collect(s), [], {"d": "d"})
    assert [(c.arch_id, c.rung, c.accuracy) for c in f.members] == [
        (PROMO_ARCHS[i].arch_id, 1, PROMO[i][2]) for i in (0, 1, 3, 5)]  # the full accuracy
    assert sorted(c.arch_id for c in f.others) == sorted(PROMO_ARCHS[i].arch_id for i in (2, 4))
    assert all(c.proposed == 1 for c in f.members)  # a promotion is no proposal
    assert promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3) == 0


def test_promotions_are_no_twins_and_stay_out_of_early_stopping_history():
    s, obj, proxies = promo_setup()
    promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3)
    assert len(history_of(s.get_trials())) == 6
    assert finished_twin(s, PROMO_ARCHS[5].arch_id, number=5) is None  # the promotion is none
    s.enqueue_trial({"i": 5})  # proposed again after the promotion: the quick trial is its twin
    s.optimize(obj, n_trials=1)
    repeat = s.get_trials()[-1]
    assert repeat.user_attrs[DUPLICATE] == 5 and repeat.values == s.get_trials()[5].values


def test_no_front_member_stays_at_a_lower_rung_over_three_rungs():
    """Three rungs, eta 2: whatever the climb, the front ends at the top rung reached."""
    by_id = {a.arch_id: p for a, p in zip(PROMO_ARCHS, PROMO)}
    s, obj, _ = promo_setup()
    proxies = {1: FakeProxy(lambda a: flat(by_id[a.arch_id][2])),
               2: FakeProxy(lambda a: flat(by_id[a.arch_id][2] + 0.1))}
    promote(s, obj, rungs=["smoke", "mid", "full"], proxy_at=proxies.__getitem__, eta=2)
    assert [PROMO_ARCHS.index(a) for a in proxies[1].calls][:3] == [0, 5, 1]  # ceil(6/2)
    (f,) = fronts(collect(s), [], {"d": "d"})
    assert {c.rung for c in f.members} == {2}
    assert all(c.accuracy == pytest.approx(by_id[c.arch_id][2] + 0.1) for c in f.members)


def test_a_failed_promotion_leaves_the_front():
    s, obj, _ = promo_setup()
    proxies = {1: FakeProxy(lambda a: flat(0.9), fail=lambda a: "nan loss" if a == PROMO_ARCHS[5] else "")}
    promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3)
    failed = [t for t in s.get_trials() if t.state == TrialState.FAIL]
    assert [t.user_attrs["arch_id"] for t in failed] == [PROMO_ARCHS[5].arch_id]
    assert failed[0].user_attrs["fail_reason"] == "nan loss" and not evaluated(failed[0])
    (f,) = fronts(collect(s), [], {"d": "d"})
    assert PROMO_ARCHS[5].arch_id not in {c.arch_id for c in f.members + f.others}
    assert {c.rung for c in f.members} == {1}


def test_interrupted_promotion_finishes_on_rerun():
    s, obj, proxies = promo_setup(interrupt=PROMO_ARCHS[5].arch_id)
    with pytest.raises(KeyboardInterrupt):
        promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3)
    trials = s.get_trials()
    assert len(trials) == 7 and trials[6].user_attrs["arch_id"] == PROMO_ARCHS[0].arch_id
    assert not any(t.state == TrialState.RUNNING for t in trials)  # nothing left half-written
    assert promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3) == 3
    again, _, fresh = promo_setup()
    promote(again, obj, rungs=["smoke", "full"], proxy_at=fresh.__getitem__, eta=3)

    def record(t: optuna.trial.FrozenTrial) -> tuple:
        return t.state, t.values, {k: v for k, v in t.user_attrs.items() if k != "proxy_seconds"}

    assert [record(t) for t in s.get_trials()] == [record(t) for t in again.get_trials()]


def test_report_shows_the_fidelity_of_every_point_and_the_cost_per_rung(tmp_path, capsys):
    s, obj, proxies = promo_setup()
    promote(s, obj, rungs=["smoke", "full"], proxy_at=proxies.__getitem__, eta=3)
    s.set_user_attr("run", {"name": "unit", "argv": ["search.py"], "devices": ["d"],
                            "sources": {"d": "fake table"}, "fidelity": "smoke",
                            "promote": {"rungs": ["smoke", "full"], "eta": 3}})
    (f,) = write_outputs(tmp_path, s)
    trials = pd.read_csv(tmp_path / "trials.csv", dtype={"promoted_from": "Int64"})
    assert trials["fidelity"].tolist() == ["smoke"] * 6 + ["full"] * 4
    assert trials["rung"].tolist() == [0] * 6 + [1] * 4
    assert trials["promoted_from"].tolist() == [pd.NA] * 6 + [0, 5, 1, 3]
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    assert pareto["fidelity"].tolist() == ["full"] * 4
    assert pareto["accuracy"].tolist() == [PROMO[i][2] for i in (0, 1, 3, 5)]
    assert rung_costs(collect(s)) == [RungCost(0, "smoke", 6, pytest.approx(0.06)),
                                      RungCost(1, "full", 4, pytest.approx(0.04))]
    report = (tmp_path / "report.md").read_text()
    assert "Promotion (MO-ASHA, eta 3, rungs smoke -> full)" in report
    assert "| 1 | full | 4 | 0 |" in report
    table = report[report.index("| name |"):].split("\n\n")[0]
    assert "| fidelity |" in table and table.count("| full |") == 4

    from optimize.cli import _print_fronts

    _print_fronts([f])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip().startswith("trial ")]
    assert [r[3] for r in rows] == ["full"] * 4


# ------------------------------------------------------------------------- report: compute
def test_pareto_mask_on_hand_made_points():
    acc = [0.5, 0.6, 0.4, 0.6, 0.7, 0.5]
    lat = [10, 20, 15, 25, 30, 10]
    # 2 is beaten by 0; 3 by 1 (same accuracy, faster); 0 and 5 tie and keep each other
    assert pareto_mask(acc, lat).tolist() == [True, True, False, False, True, True]
    assert pareto_mask([], []).tolist() == []


def test_hypervolume_against_hand_computed_area():
    # (acc 0.5 @ 10 ms) covers [10, 30] x [0, 0.5] = 10; (0.7 @ 20 ms) adds [20, 30] x [0.5, 0.7] = 2
    assert hypervolume([0.5, 0.7], [10, 20], ref_latency=30) == pytest.approx(12.0)
    # a point past the reference adds nothing; a dominated one adds nothing
    assert hypervolume([0.5, 0.7, 0.9, 0.4], [10, 20, 40, 25], ref_latency=30) == pytest.approx(12.0)
    # with ref accuracy 0.6 only the second point counts: 10 ms x 0.1
    assert hypervolume([0.5, 0.7], [10, 20], ref_latency=30, ref_accuracy=0.6) == pytest.approx(1.0)
    assert hypervolume([0.5], [40], ref_latency=30) == 0.0


def cand(i: int, acc: float | None, ms: Mapping[str, float], state: str = "complete") -> Candidate:
    return Candidate(name=f"trial {i}", number=i, state=state, arch=variant(i), accuracy=acc,
                     latency_ms=dict(ms), params_m=1.0)


def test_fronts_per_device_with_presets():
    cands = [
        cand(0, 0.5, {"a": 1.0, "b": 9.0}),
        cand(1, 0.7, {"a": 2.0, "b": 1.0}),
        cand(2, 0.6, {"a": 3.0, "b": 2.0}),
        cand(3, 0.9, {"a": 0.5, "b": 0.5}, state="stopped_early"),  # not fully trained
        cand(4, None, {"a": 0.1, "b": 0.1}, state="fail"),
        cand(5, 0.99, {"a": 0.1, "b": 0.1}, state="infeasible"),
    ]
    t0 = Candidate(name="fasternet_t0", number=None, state="preset", arch=T0, accuracy=0.4,
                   latency_ms={"a": 1.5}, params_m=3.9)
    fa, fb = fronts(cands, [t0], {"a": "table a", "b": "table b"})
    assert (fa.device, fa.source, fb.device) == ("a", "table a", "b")
    assert [c.number for c in fa.members] == [0, 1]  # sorted by latency on a
    assert [c.number for c in fa.others] == [2]
    assert [c.number for c in fb.members] == [1]
    assert sorted(c.number for c in fb.others) == [0, 2]
    assert fa.presets == [t0] and fb.presets == []  # T0 has no latency on b


def front(points: Sequence[tuple[float, float]], device: str = "d") -> Front:
    members = [cand(i, acc, {device: ms}) for i, (ms, acc) in enumerate(points)]
    return Front(device=device, source="hand-made", members=members, others=[], presets=[])


KNEE_FRONT = front([(1.0, 0.10), (2.0, 0.65), (6.0, 0.70), (10.0, 0.75)])


@pytest.mark.parametrize("pick, number", [("knee", 1), ("fastest", 0), ("most-accurate", 3)])
def test_select_rules(pick, number):
    # knee: scaled (x, y) = (0, 0), (.11, .85), (.56, .92), (1, 1); member 1 is farthest above the chord
    assert select(KNEE_FRONT, pick=pick).number == number


def test_select_by_arch_id_and_max_latency():
    third = KNEE_FRONT.members[2]
    assert select(KNEE_FRONT, pick=third.arch_id) is third
    assert select(KNEE_FRONT, max_latency_ms=6.5) is third
    assert select(KNEE_FRONT, max_latency_ms=6.0) is third  # the limit is inclusive
    assert select(KNEE_FRONT, max_latency_ms=100.0).number == 3
    with pytest.raises(ValueError, match="within 0.5 ms"):
        select(KNEE_FRONT, max_latency_ms=0.5)
    with pytest.raises(ValueError, match="fn-nope"):
        select(KNEE_FRONT, pick="fn-nope")


def test_select_on_small_fronts():
    two = front([(1.0, 0.1), (2.0, 0.2)])
    assert select(two, pick="knee").number == 1
    one = front([(3.0, 0.4)])
    assert all(select(one, pick=p).number == 0 for p in ("knee", "fastest", "most-accurate"))
    with pytest.raises(ValueError, match="empty"):
        select(front([]), pick="knee")


# --------------------------------------------------------------------------- report: draw
def test_write_outputs_renders_the_computed_structure(tmp_path):
    archs = [variant(i) for i in range(4)]
    ms = {a.arch_id: m for a, m in zip(archs, [1.0, 2.0, 3.0, 4.0])}
    accs = {a.arch_id: v for a, v in zip(archs, [0.3, 0.5, 0.4, 0.6])}
    obj = Objective(space=ListSpace(archs), proxy=FakeProxy(lambda a: flat(accs[a.arch_id])),
                    latency={"d": FakeTable(ms)})
    s = study(obj.directions)
    for i in range(4):
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=4)
    s.set_user_attr("run", {"name": "unit", "argv": ["search.py"], "devices": ["d"],
                            "sources": {"d": "fake table"}})

    (f,) = write_outputs(tmp_path, s)
    assert [c.number for c in f.members] == [0, 1, 3]
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert trials["number"].tolist() == [0, 1, 2, 3]
    assert trials["latency_ms_d"].tolist() == [1.0, 2.0, 3.0, 4.0]
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    assert pareto["arch_id"].tolist() == [c.arch_id for c in f.members]
    assert sorted(p.stem for p in (tmp_path / "archs").iterdir()) == sorted(c.arch_id for c in f.members)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert "Latency source: fake table" in report and "complete 4" in report


def test_front_lists_each_architecture_once_with_how_often_it_was_proposed(tmp_path, capsys):
    archs = [variant(i) for i in range(4)]
    ms = {a.arch_id: m for a, m in zip(archs, [1.0, 2.0, 3.0, 4.0])}
    accs = {a.arch_id: v for a, v in zip(archs, [0.3, 0.5, 0.4, 0.6])}
    obj = Objective(space=ListSpace(archs), proxy=FakeProxy(lambda a: flat(accs[a.arch_id])),
                    latency={"d": FakeTable(ms)})
    s = study(obj.directions)
    for i in (0, 2, 0, 2, 3, 0, 3, 1):  # the fourth distinct architecture comes last
        s.enqueue_trial({"i": i})
    run_optuna(s, obj, n_trials=4)
    s.set_user_attr("run", {"name": "unit", "argv": ["search.py"], "devices": ["d"],
                            "sources": {"d": "fake table"}})

    (f,) = write_outputs(tmp_path, s)
    assert [(c.number, c.proposed) for c in f.members] == [(0, 3), (7, 1), (4, 2)]
    assert [(c.number, c.proposed) for c in f.others] == [(1, 2)]  # dominated, also once
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    assert pareto["arch_id"].tolist() == [archs[i].arch_id for i in (0, 1, 3)]
    assert pareto["proposed"].tolist() == [3, 1, 2] and "duplicate_of" not in pareto
    trials = pd.read_csv(tmp_path / "trials.csv", dtype={"duplicate_of": "Int64"})
    assert trials["number"].tolist() == list(range(8))  # every trial, repeats included
    assert trials["duplicate_of"].tolist() == [pd.NA, pd.NA, 0, 1, pd.NA, 0, 4, pd.NA]
    assert trials["proposed"].tolist() == [3, 2, 3, 2, 2, 3, 2, 1]
    report = (tmp_path / "report.md").read_text()
    assert "4 of the trials proposed an architecture evaluated before" in report
    table = report[report.index("| name |"):].split("\n\n")[0]
    assert "| proposed |" in table and len(table.splitlines()) == 2 + 3
    assert f"| trial 0 | {archs[0].arch_id} | 3 |" in table

    from optimize.cli import _print_fronts

    _print_fronts([f])
    printed = capsys.readouterr().out
    assert "proposed" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith("trial ")]
    assert [(r[1], r[2]) for r in rows] == [("0", "x3"), ("7", "x1"), ("4", "x2")]


def test_ctrl_c_is_held_outside_training_and_immediate_inside():
    import os
    import signal

    from optimize.interrupt import CtrlC

    guard = CtrlC()
    with guard.installed():
        os.kill(os.getpid(), signal.SIGINT)  # e.g. during a storage write: held
        assert guard.pending
        with pytest.raises(KeyboardInterrupt):
            guard.check()
        guard.check()  # raised once, then clear
        with pytest.raises(KeyboardInterrupt):
            with guard.training():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
        assert not guard.armed and not guard.pending
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # a held one is raised on entering training
            with guard.training():
                raise AssertionError("not reached")
    assert signal.getsignal(signal.SIGINT) is not guard._handler


# ------------------------------------------------------------------ Ray: shared evaluation
SHARED_ARCHS = [variant(i) for i in range(4)]
# two fast accurate candidates, a slow weak one (stopped early), one that fails
_SHARED = {SHARED_ARCHS[0].arch_id: (5.0, flat(0.8)), SHARED_ARCHS[1].arch_id: (6.0, flat(0.85)),
           SHARED_ARCHS[2].arch_id: (20.0, {2: 0.3, 4: 0.9}), SHARED_ARCHS[3].arch_id: (1.0, flat(0.5))}


def shared_objective() -> Objective:
    proxy = FakeProxy(lambda a: _SHARED[a.arch_id][1],
                      fail=lambda a: "nan loss" if a == SHARED_ARCHS[3] else "")
    return Objective(space=ListSpace(SHARED_ARCHS), proxy=proxy,
                     early_stopping=ParetoEarlyStopping(margin=0.02, min_dominators=2),
                     latency={"dev": FakeTable({k: v[0] for k, v in _SHARED.items()})})


def test_ray_trainable_evaluates_like_the_optuna_objective():
    """The Ray trainable runs `Objective.__call__`: the same states, values and records as the
    Optuna backend, early stopping, failure and a repeated architecture included. A Ray
    evaluation that drifted from the objective's (as its former copy did) fails here."""
    pytest.importorskip("ray.tune")
    from optimize.ray_backend import _ATTRS, _STATE, _final_result, _TuneTrial

    order = [0, 0, 1, 3, 3, 2]  # the fourth distinct architecture comes last
    by_optuna = study(["maximize", "minimize"])
    for i in order:
        by_optuna.enqueue_trial({"i": i})
    run_optuna(by_optuna, shared_objective(), n_trials=4)

    by_ray, objective = study(["maximize", "minimize"]), shared_objective()
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
    for i in order:  # as `_Search`: ask, the trainable's result, attributes, tell
        asked = by_ray.ask()
        result = _final_result(objective, _TuneTrial({"i": i}, by_ray))
        for key, value in json.loads(result[_ATTRS]).items():
            asked.set_user_attr(key, value)
        state = states[result[_STATE]]
        values = [result["accuracy"], result["latency_ms:dev"]]
        by_ray.tell(asked, values if state == TrialState.COMPLETE else None, state=state)
    assert [a.arch_id for a in objective.proxy.calls] == [SHARED_ARCHS[i].arch_id for i in (0, 1, 3, 2)]

    def record(t: optuna.trial.FrozenTrial) -> tuple:  # attributes as a storage holds them (JSON)
        attrs = {k: v for k, v in t.user_attrs.items() if k != "proxy_seconds"}
        return t.state, t.values, json.loads(json.dumps(attrs))

    ray_trials, optuna_trials = by_ray.get_trials(), by_optuna.get_trials()
    assert [record(t) for t in ray_trials] == [record(t) for t in optuna_trials]
    assert [t.state for t in ray_trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                             TrialState.COMPLETE, TrialState.FAIL,
                                             TrialState.FAIL, TrialState.PRUNED]
    assert STOPPED in ray_trials[5].user_attrs and ray_trials[3].user_attrs["fail_reason"] == "nan loss"
    assert [t.user_attrs.get(DUPLICATE) for t in ray_trials] == [None, 0, None, None, 3, None]


def test_ray_searcher_tells_the_state_the_trainable_reports():
    pytest.importorskip("ray.tune")
    from optimize.ray_backend import _ATTRS, _STATE, _Define, _Search

    two = SearchSpace.from_dict({"stages": 2, "widths": [[16], [32]], "depths": [[1], [1]],
                                 "act": ["gelu", "relu"]})
    searcher = _Search(arch_space=two, space=_Define(two.params()), metric=["accuracy", "latency_ms:d"],
                       mode=["max", "min"], sampler=optuna.samplers.RandomSampler(seed=0),
                       study_name="pconv-nas", seed=0)
    for n, (state, attrs) in enumerate([("fail", {"fail_reason": "nan loss"}),
                                        ("pruned", {STOPPED: True, "accuracy": 0.2})]):
        searcher.suggest(f"t{n}")
        searcher.on_trial_complete(f"t{n}", {"accuracy": math.nan, "latency_ms:d": math.nan,
                                             _STATE: state, _ATTRS: json.dumps(attrs)})
    failed, stopped = searcher._ot_study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "nan loss"
    assert stopped.state == TrialState.PRUNED and stopped.user_attrs[STOPPED] is True


@pytest.mark.parametrize(("gpus_per_trial", "cluster", "gpu"), [
    (None, {"CPU": 8.0}, 0.0),            # no GPUs: CPU trials
    (None, {"CPU": 8.0, "GPU": 2.0}, 1.0),  # GPUs: one each by default
    (0.25, {"CPU": 8.0, "GPU": 1.0}, 0.25),  # four per GPU
    (0, {"CPU": 8.0, "GPU": 1.0}, 0.0),
    (2, {"CPU": 8.0, "GPU": 2.0}, 2.0),
])
def test_ray_trial_resources(gpus_per_trial, cluster, gpu):
    pytest.importorskip("ray.tune")
    from optimize.ray_backend import trial_resources

    assert trial_resources(gpus_per_trial, cluster) == {"cpu": 1, "gpu": gpu}


@pytest.mark.parametrize(("gpus_per_trial", "cluster", "match"), [
    (-1, {"GPU": 1.0}, ">= 0"),
    (math.nan, {"GPU": 1.0}, ">= 0"),
    (1.5, {"GPU": 4.0}, "whole number"),
    (1, {"CPU": 8.0}, "reports 0 GPU"),
    (0.5, {}, "reports 0 GPU"),
])
def test_ray_trial_resources_rejects_what_the_cluster_cannot_give(gpus_per_trial, cluster, match):
    pytest.importorskip("ray.tune")
    from optimize.ray_backend import ClusterError, trial_resources

    with pytest.raises(ClusterError, match=match):
        trial_resources(gpus_per_trial, cluster)


# ----------------------------------------------------------------------- worker processes
def slow_objective() -> Objective:
    """Module level, so a spawned worker can build it: 12 architectures, a proxy that takes
    0.2 s and reports the process it ran in as its TSE."""
    import os
    import time

    archs = [variant(i) for i in range(12)]

    class InWorker(FakeProxy):
        def __call__(self, arch: ArchConfig, *, callback=None) -> ProxyResult:
            time.sleep(0.2)
            return dataclasses.replace(super().__call__(arch, callback=callback), tse=os.getpid())

    return Objective(space=ListSpace(archs), proxy=InWorker(lambda a: flat(0.5)),
                     latency={"d": FakeTable(lambda a: float(a.feature_dim))})


@pytest.mark.slow  # two spawned interpreters import torch: 16-28 s on the 2-core machine
def test_worker_processes_evaluate_distinct_architectures_on_one_storage(tmp_path):
    import functools
    import os

    from optimize.processes import run_processes
    from optimize.runner import make_sampler

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    s = optuna.create_study(storage=storage, study_name="pconv-nas",
                            directions=["maximize", "minimize"])
    seen: list[int] = []
    run_processes(s, storage=storage, make_objective=slow_objective,
                  make_sampler=functools.partial(make_sampler, "random", n_trials=5), seed=0,
                  n_trials=5, workers=2, timeout=120, on_trial=lambda st, t: seen.append(t.number))
    trials = s.get_trials()
    counted = [t for t in trials if evaluated(t)]
    assert 5 <= len(counted) <= 5 + 1  # trials running when the count was reached finish
    trained = [t for t in counted if DUPLICATE not in t.user_attrs]
    # An architecture is trained twice only when two workers drew it at once (a twin is
    # reused once it has finished; optimize/processes.py): the second started before the
    # first completed.
    by_arch: dict[str, list] = {}
    for t in trained:
        by_arch.setdefault(t.user_attrs["arch_id"], []).append(t)
    for twins in by_arch.values():
        twins.sort(key=lambda t: t.datetime_start)
        for first, second in zip(twins, twins[1:]):
            assert second.datetime_start < first.datetime_complete
    assert len(by_arch) >= 3
    pids = {t.user_attrs["tse"] for t in trained}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert sorted(seen) == [t.number for t in trials if t.state.is_finished()]
    run_processes(s, storage=storage, make_objective=slow_objective,  # resumed: nothing to do
                  make_sampler=functools.partial(make_sampler, "random", n_trials=5), seed=0,
                  n_trials=5, workers=2)
    assert len(s.get_trials()) == len(trials)


@pytest.mark.parametrize("budget", [None, 5])
def test_concurrent_threads_evaluate_exactly_the_budget(budget):
    """Three threads, --trials 5: without a budget on the objective, trials running when the
    count is reached finish and overshoot; with it, the trials that would overshoot wait, then
    give up untrained (`SURPLUS`, not counted)."""
    import time

    from optimize.runner import run_optuna

    archs = [variant(i) for i in range(12)]

    class Slow(FakeProxy):
        def __call__(self, arch: ArchConfig, *, callback=None) -> ProxyResult:
            time.sleep(0.15)
            return super().__call__(arch, callback=callback)

    objective = Objective(space=ListSpace(archs), proxy=Slow(lambda a: flat(0.5)),
                          latency={"d": FakeTable(lambda a: float(a.feature_dim))}, budget=budget)
    s = optuna.create_study(directions=["maximize", "minimize"],
                            sampler=optuna.samplers.RandomSampler(seed=1))
    run_optuna(s, objective, 5, workers=3)
    counted = [t for t in s.trials if evaluated(t)]
    surplus = [t for t in s.trials if SURPLUS in t.user_attrs]
    if budget is None:
        assert 5 <= len(counted) <= 7 and not surplus
    else:
        assert len(counted) == 5
        assert all(t.state == optuna.trial.TrialState.PRUNED and "budget" in describe_trial(t)
                   for t in surplus)


def _member(name: str, arch: ArchConfig, acc: float | None, ms: float, fidelity: str) -> Candidate:
    return Candidate(name=name, number=None, state="complete", arch=arch, accuracy=acc,
                     latency_ms={"d": ms}, params_m=None, fidelity=fidelity)


def test_front_ties_follow_the_sampling_error_of_the_validation_images():
    a, b, c = (PRESETS["fasternet_t0"], PRESETS["fasternet_t1"], PRESETS["fasternet_t2"])
    # quick: 2000 validation images -> SE about 0.0086 at 0.82; a 0.01 gap is a tie, 0.08 is not.
    members = [_member("fast", a, 0.74, 1.0, "quick"), _member("mid", b, 0.82, 2.0, "quick"),
               _member("slow", c, 0.83, 3.0, "quick")]
    front = Front(device="d", source="s", members=members, others=[], presets=[])
    assert accuracy_error(members[1]) == pytest.approx(math.sqrt(0.82 * 0.18 / 2000))
    assert ties_with_best(front) == {a.arch_id: False, b.arch_id: True, c.arch_id: True}
    assert "2 of the 3 front members" in tie_note(front) and "mid" in tie_note(front)
    assert "accuracy rises with latency up to 2 ms" in tie_note(front)
    flat = Front(device="d", source="s", members=members[1:], others=[], presets=[])
    assert "Every member ties: from 2 to 3 ms (1.5x) accuracy does not rise" in tie_note(flat)
    # A larger validation sample shrinks the band: at 50,000 images 0.01 is no longer a tie.
    wide = [dataclasses.replace(m, fidelity="quick,val_size=50000") for m in members]
    front = Front(device="d", source="s", members=wide, others=[], presets=[])
    assert ties_with_best(front)[b.arch_id] is False
    # Scores without a sampling error (no budget named) mark nothing.
    bare = [dataclasses.replace(m, fidelity="") for m in members]
    assert ties_with_best(Front(device="d", source="s", members=bare, others=[],
                                presets=[])) == {}
