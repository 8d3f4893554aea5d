"""What Pareto early stopping saves, and what it does to the front.

    python benchmarks/early_stopping.py [--device amd-epyc] [--sampler tpe] [--seeds 0,1,2]
                                        [--trials 20] [--budget quick] [--out DIR]

For each seed, the same search (sampler seeded with it) runs twice on in-memory studies:
with the rule of `optimize/early_stop.py` and without it. It reports, per run, the proxy
training time spent, the number of candidates stopped early, the hypervolume of the front
(accuracy x latency, reference: accuracy 0 and 1.25 x the slowest preset's latency) and
which presets the front dominates.

Replay: the proxy is deterministic for a given architecture and seed, so each
architecture is trained once at the full budget with every checkpoint recorded
(`--cache`, JSON). Runs replay those records: the stopping rule sees exactly the
checkpoint accuracies it would have seen, and a stopped candidate is charged the
measured training time x the fraction of steps it ran. That makes the with/without
comparison exact and the benchmark affordable; the charged seconds are measured times.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from latency_tables import LatencyTable  # noqa: E402
from optimize import Objective, ParetoEarlyStopping, collect, fronts, hypervolume, make_sampler  # noqa: E402
from optimize.report import dominates  # noqa: E402
from optimize.runner import run_optuna  # noqa: E402
from proxies import ProxyResult, make_proxy  # noqa: E402
from search_space import PRESETS, ArchConfig, SearchSpace  # noqa: E402

PRESET_NAMES = ("fasternet_t0", "fasternet_t1", "fasternet_t2")


class ReplayProxy:
    """Trains each architecture once (all checkpoints recorded), then replays the record."""

    def __init__(self, proxy, cache: Path) -> None:
        self.proxy, self.cache = proxy, cache
        self.budget = proxy.budget
        self.records: dict = {}
        self._merge()
        self.charged = 0.0
        self.trained = 0
        self.training_s = 0.0  # wall time spent training (cache misses) in this process

    def _merge(self, new: dict | None = None) -> None:
        """Re-read the cache file and add `new` to it, under a lock: several benchmark
        processes may share one cache."""
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.cache.exists():
                self.records.update(json.loads(self.cache.read_text()))
            if new:
                self.records.update(new)
                tmp = self.cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.records))
                tmp.replace(self.cache)

    def _record(self, arch: ArchConfig) -> dict:
        key = f"{arch.arch_id}|{self.proxy.name}|{self.budget}|{self.proxy.seed}"
        if key not in self.records:
            self._merge()  # another process may have trained it meanwhile
        if key not in self.records:
            marks: list[tuple[int, float]] = []
            start = time.perf_counter()
            r = self.proxy(arch, callback=lambda s, a: marks.append((s, a)) and False)
            self.trained += 1
            self.training_s += time.perf_counter() - start
            self._merge({key: {"checkpoints": marks, "accuracy": r.accuracy, "score": r.score,
                               "seconds": r.seconds, "steps": r.steps, "failed": r.failed,
                               "reason": r.reason}})
        return self.records[key]

    def __call__(self, arch: ArchConfig, *, callback=None) -> ProxyResult:
        rec = self._record(arch)
        total = self.budget.steps
        base = dict(proxy=self.proxy.name, arch_id=arch.arch_id, budget=self.budget,
                    seed=self.proxy.seed)
        if rec["failed"]:
            self.charged += rec["seconds"]
            return ProxyResult(score=float("-inf"), failed=True, reason=rec["reason"],
                               seconds=rec["seconds"], **base)
        seen = []
        for step, acc in rec["checkpoints"]:
            seen.append((step, acc))
            if callback is not None and step < total and callback(step, acc):
                secs = rec["seconds"] * step / total
                self.charged += secs
                return ProxyResult(score=acc, accuracy=acc, seconds=secs, steps=step,
                                   checkpoints=tuple(seen), stopped_early=True, **base)
            if callback is not None and step >= total:
                callback(step, acc)
        self.charged += rec["seconds"]
        return ProxyResult(score=rec["score"], accuracy=rec["accuracy"], seconds=rec["seconds"],
                           steps=total, checkpoints=tuple(seen), **base)


def run_one(space, table, device, proxy, sampler, seed, trials, early) -> dict:
    proxy.charged = 0.0
    objective = Objective(space=space, latency={device: table}, proxy=proxy,
                          early_stopping=ParetoEarlyStopping() if early else None)
    study = optuna.create_study(directions=objective.directions,
                                sampler=make_sampler(sampler, seed, trials))
    t0 = time.perf_counter()
    run_optuna(study, objective, trials)
    wall = time.perf_counter() - t0
    cands = collect(study)
    return {"study": study, "cands": cands, "charged_s": proxy.charged, "wall_s": wall,
            "stopped": sum(c.state == "stopped_early" for c in cands)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="amd-epyc")
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--budget", default="quick")
    p.add_argument("--cache", default="benchmarks/reports/proxy_cache.json")
    p.add_argument("--out", default="benchmarks/reports/early_stopping.md")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.default()
    table = LatencyTable.load(args.device)
    cache = Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    proxy = ReplayProxy(make_proxy("short_train", budget=args.budget, seed=0), cache)
    presets = {}
    for name in PRESET_NAMES:
        r = proxy(PRESETS[name])
        presets[name] = (r.accuracy, table.predict(PRESETS[name]))
    ref_ms = 1.25 * max(ms for _, ms in presets.values())
    lines = [f"# Pareto early stopping: {args.sampler}, {args.trials} trials, device "
             f"{args.device} ({table.source}), budget {args.budget}", "",
             "| seed | early stopping | stopped | proxy seconds | hypervolume | presets dominated |",
             "| --- | --- | --- | --- | --- | --- |"]
    totals = {True: [0.0, 0.0], False: [0.0, 0.0]}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for early in (False, True):
            res = run_one(space, table, args.device, proxy, args.sampler, seed, args.trials, early)
            (front,) = fronts(res["cands"], [], {args.device: args.device})
            hv = hypervolume([c.accuracy for c in front.members],
                             [c.latency_ms[args.device] for c in front.members], ref_ms)
            dom = [n.replace("fasternet_", "").upper() for n, (acc, ms) in presets.items()
                   if dominates([c.accuracy for c in front.members],
                                [c.latency_ms[args.device] for c in front.members], acc, ms)]
            totals[early][0] += res["charged_s"]
            totals[early][1] += hv
            lines.append(f"| {seed} | {'on' if early else 'off'} | {res['stopped']} | "
                         f"{res['charged_s']:.0f} | {hv:.3f} | {', '.join(dom) or 'none'} |")
            print(lines[-1], flush=True)
    saved = 1 - totals[True][0] / max(totals[False][0], 1e-9)
    hv_change = totals[True][1] / max(totals[False][1], 1e-9) - 1
    lines += ["", f"Over all seeds: early stopping spends {saved:.0%} less proxy time; "
              f"hypervolume changes by {hv_change:+.1%}.", "",
              "Presets (same proxy and table): " + ", ".join(
                  f"{n}: acc {a:.3f}, {ms:.2f} ms" for n, (a, ms) in presets.items()), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
