"""Multi-fidelity promotion: the search's candidates re-checked at longer budgets (MO-ASHA).

Schmucker et al., "Multi-objective Asynchronous Successive Halving", 2021: successive halving
whose rungs keep the best 1/eta candidates by non-dominated sorting, ties within a rank broken
by crowding distance (Deb et al., NSGA-II, 2002; MO-ASHA's epsilon-net variant is not
implemented here). Optuna cannot prune multi-objective studies and Ray Tune's schedulers take
one metric, so the project runs its own rungs, synchronously, after the search:

1. Rung k -> k+1, for k = 0 .. K-1: the pool is every architecture fully trained at rung k
   (candidates stopped early were dominated at rung 0 and stay out). Per device the pool is
   ordered by non-domination rank of (accuracy at rung k, latency on that device), then by
   crowding distance, largest first; the devices take turns picking from their orders until
   ceil(|pool| / eta) distinct architectures are chosen. Those not yet trained at rung k+1 are.
2. Settle the front: each architecture counts with the accuracy of the highest rung it
   reached (`report.fronts`); while a member of some device's front sits below the highest
   rung any architecture reached, it is promoted one rung. Each architecture climbs at most K
   rungs, so this ends, and then no front member stopped at a lower rung than another.

A promotion is a trial of its own, added to the study once it has finished (COMPLETE with the
rung's values, or FAIL), carrying the architecture's record and `rung`, `fidelity` and
`promoted_from` (the trial that proposed the architecture). Nothing is held RUNNING, so a
promotion cut off by Ctrl-C or kill -9 leaves no trace, and `--resume` runs this procedure
again: it finds the promotions already in the study and trains only what is missing.
Promotions do not count toward `--trials` (`runner.evaluated`), are no twin of a proposal
(`objective.finished_twin`) and stay out of the early-stopping history (their checkpoints
are other steps of another schedule).

The sampler sees a promotion as one more complete trial of an architecture it knows, with the
higher rung's accuracy. That is not what its model assumes (one fidelity), but it only
matters when a finished run is resumed with a larger `--trials` (promotion runs after the
search), and then it is one more observation of a front member; excluding them would need a
sampler wrapper, left for when that case matters.

Cost: rung k+1 trains at most ceil(n_k / eta) architectures at its budget, n_0 being the
search's fully trained candidates, plus the front members step 2 promotes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from .interrupt import CtrlC
from .objective import DUPLICATE, FIDELITY, INTERRUPTED, PROMOTED_FROM, RUNG, Objective, rung_of

__all__ = ["parse_rungs", "nondominated_ranks", "crowding_distance", "promotion_order", "choose",
           "Entry", "entries", "promote"]


def parse_rungs(spec: str) -> list[str]:
    """Rung budgets from `--promote`: ``quick,full``; a level name starts a rung and
    ``key=value`` parts amend the rung before them (``smoke,smoke,steps=8``: two rungs), as
    `--budget` reads them; ``;`` separates rungs explicitly (``steps=64;steps=640``). Returns
    each rung's spec (for `proxies.Budget.parse`); at least two."""
    from proxies import BUDGETS

    if ";" in spec:
        rungs = [p.strip().strip(",") for p in spec.split(";")]
    else:
        rungs = []
        for part in (p.strip() for p in spec.split(",")):
            if part in BUDGETS or not rungs:
                rungs.append(part)
            else:
                rungs[-1] += "," + part
    rungs = [r for r in rungs if r]
    if len(rungs) < 2:
        raise ValueError(f"--promote {spec!r}: name at least two rungs, the search's budget "
                         "first (e.g. quick,full)")
    return rungs


# ------------------------------------------------------------------------------ compute
def nondominated_ranks(accuracy: Sequence[float], latency: Sequence[float]) -> list[int]:
    """Rank of every point (0: not dominated; r: dominated only by ranks < r), maximizing
    accuracy and minimizing latency (non-dominated sorting, Deb et al. 2002)."""
    acc, lat = np.asarray(accuracy, float), np.asarray(latency, float)
    ranks = [-1] * len(acc)
    left, r = set(range(len(acc))), 0
    while left:
        idx = sorted(left)
        front = [i for i in idx if not any(
            acc[j] >= acc[i] and lat[j] <= lat[i] and (acc[j] > acc[i] or lat[j] < lat[i])
            for j in idx)]
        for i in front:
            ranks[i] = r
        left -= set(front)
        r += 1
    return ranks


def crowding_distance(accuracy: Sequence[float], latency: Sequence[float],
                      members: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of `members` (indices of one rank): per objective, the gap
    between a point's two neighbours over the objective's range in the whole pool; the two
    ends of each objective get infinity (they span the front and are always kept first)."""
    out = {i: 0.0 for i in members}
    for values in (np.asarray(accuracy, float), np.asarray(latency, float)):
        span = float(values.max() - values.min()) if len(values) else 0.0
        order = sorted(members, key=lambda i: (values[i], i))
        if not order:
            continue
        out[order[0]] = out[order[-1]] = math.inf
        for a, i, b in zip(order, order[1:-1], order[2:]):
            out[i] += (values[b] - values[a]) / span if span > 0 else 0.0
    return out


def promotion_order(accuracy: Sequence[float], latency: Sequence[float]) -> list[int]:
    """Indices best first: by non-domination rank, then crowding distance (largest first),
    then index (the earlier trial)."""
    ranks = nondominated_ranks(accuracy, latency)
    crowd: dict[int, float] = {}
    for r in set(ranks):
        crowd.update(crowding_distance(accuracy, latency, [i for i, x in enumerate(ranks) if x == r]))
    return sorted(range(len(ranks)), key=lambda i: (ranks[i], -crowd[i], i))


class Entry(NamedTuple):
    """An architecture's result at one rung, as the selection sees it."""

    arch_id: str
    accuracy: float
    latency_ms: Mapping[str, float]


def choose(pool: Sequence[Entry], devices: Sequence[str], eta: int) -> list[str]:
    """The arch_ids promoted from `pool`: ceil(|pool| / eta), the devices taking turns to pick
    their best (`promotion_order` on accuracy vs that device's latency) not yet chosen."""
    quota = math.ceil(len(pool) / eta)
    orders = [[pool[i].arch_id for i in promotion_order(
        [e.accuracy for e in pool], [e.latency_ms[d] for e in pool])] for d in devices]
    chosen: list[str] = []
    while len(chosen) < quota:
        for order in orders:
            pick = next((a for a in order if a not in chosen), None)
            if pick is not None and len(chosen) < quota:
                chosen.append(pick)
    return chosen


def entries(trials: Sequence[FrozenTrial], rung: int) -> list[Entry]:
    """Architectures fully trained at `rung` (their first such trial), in trial order."""
    out, seen = [], set()
    for t in trials:
        ua = t.user_attrs
        if (t.state != TrialState.COMPLETE or rung_of(t) != rung or DUPLICATE in ua
                or "accuracy" not in ua or ua["arch_id"] in seen):
            continue
        seen.add(ua["arch_id"])
        out.append(Entry(ua["arch_id"], float(ua["accuracy"]), ua["latency_ms"]))
    return out


# ------------------------------------------------------------------------------ run
def _attempted(trials: Sequence[FrozenTrial], arch_id: str, rung: int) -> bool:
    return any(t.user_attrs.get("arch_id") == arch_id and rung_of(t) == rung
               and t.state in (TrialState.COMPLETE, TrialState.FAIL) and DUPLICATE not in t.user_attrs
               and INTERRUPTED not in t.user_attrs for t in trials)


def promote(study: optuna.Study, objective: Objective, *, rungs: Sequence[str],
            proxy_at: Callable[[int], Any], eta: int,
            on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
    """Run the promotion (module docstring) on `study`: `rungs` are the rung labels (rung 0
    is the search's budget), `proxy_at(k)` the proxy of rung k >= 1 (same factory, same seed,
    that rung's budget). Returns how many promotions were trained now. Ctrl-C interrupts a
    training promotion at once (nothing is written for it) and is held during writes."""
    if eta < 2:
        raise ValueError(f"eta: {eta} must be >= 2")
    devices = list(objective.latency)
    done = 0
    ctrl_c = CtrlC()
    with ctrl_c.installed():
        for k in range(len(rungs) - 1):
            trials = study.get_trials(deepcopy=False)
            for arch_id in choose(entries(trials, k), devices, eta):
                if not _attempted(trials, arch_id, k + 1):
                    _train(study, objective, arch_id, k + 1, rungs, proxy_at, ctrl_c, on_trial)
                    done += 1
        while True:
            laggards = _laggards(study, devices)
            if not laggards:
                return done
            for arch_id, k in laggards:
                _train(study, objective, arch_id, k + 1, rungs, proxy_at, ctrl_c, on_trial)
                done += 1


def _laggards(study: optuna.Study, devices: Sequence[str]) -> list[tuple[str, int]]:
    """(arch_id, rung) of the front members below the highest rung reached, on any device."""
    from .report import collect, fronts

    cands = collect(study)
    top = max((c.rung for c in cands if c.state == "complete"), default=0)
    out: dict[str, int] = {}
    for f in fronts(cands, [], {d: d for d in devices}):
        for c in f.members:
            if c.rung < top:
                out[c.arch_id] = c.rung
    return list(out.items())  # in front order (fastest first)


def _train(study: optuna.Study, objective: Objective, arch_id: str, rung: int,
           rungs: Sequence[str], proxy_at: Callable[[int], Any], ctrl_c: CtrlC,
           on_trial: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
    """Train `arch_id` at `rung` with that rung's proxy and add the finished trial."""
    from search_space import ArchConfig

    base = next(t for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("arch_id") == arch_id and rung_of(t) == 0
                and DUPLICATE not in t.user_attrs and t.state == TrialState.COMPLETE)
    ua = base.user_attrs
    arch = ArchConfig.from_dict(ua["arch"])
    checkpoints: list[tuple[int, float]] = []

    def record(step: int, accuracy: float) -> bool:
        checkpoints.append((step, accuracy))
        return False  # a promotion trains to the end

    with ctrl_c.training():
        result = proxy_at(rung)(arch, callback=record)
    attrs: dict[str, Any] = {key: ua[key] for key in ("arch", "arch_id", "latency_ms", "params_m")}
    attrs.update({RUNG: rung, FIDELITY: rungs[rung], PROMOTED_FROM: base.number,
                  "checkpoints": checkpoints, "proxy_seconds": result.seconds})
    if result.tse is not None:
        attrs["tse"] = result.tse
    if result.failed:
        attrs["fail_reason"] = result.reason
        trial = optuna.trial.create_trial(state=TrialState.FAIL, params=base.params,
                                          distributions=base.distributions, user_attrs=attrs)
    else:
        accuracy = float(result.score if result.accuracy is None else result.accuracy)
        attrs["accuracy"] = accuracy
        info = {"latency_ms": ua["latency_ms"], "params_m": ua["params_m"]}
        values = ([objective.reward(accuracy, info)] if objective.objective == "score"
                  else [accuracy, *ua["latency_ms"].values()])
        trial = optuna.trial.create_trial(state=TrialState.COMPLETE, values=values,
                                          params=base.params, distributions=base.distributions,
                                          user_attrs=attrs)
    study.add_trial(trial)
    if on_trial is not None:
        on_trial(study, study.get_trials(deepcopy=False)[-1])
    ctrl_c.check()
