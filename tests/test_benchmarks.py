"""The search-quality benchmark's bookkeeping: shared replay cache, hypervolume, dominance."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from proxies import ProxyResult
from search_space import PRESETS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sq = importlib.import_module("search_quality")
early_stopping = importlib.import_module("early_stopping")


class CountingProxy:
    """A deterministic stand-in for ShortTrain that counts its trainings."""

    name = "short_train"
    seed = 0

    def __init__(self) -> None:
        from proxies import Budget

        self.budget = Budget(steps=4, checkpoints=2)
        self.calls = 0

    def __call__(self, arch, *, callback=None) -> ProxyResult:
        self.calls += 1
        acc = 0.5 + (sum(arch.widths) % 97) / 1000
        for step in (2, 4):
            if callback is not None:
                callback(step, acc - 0.01 * (4 - step))
        return ProxyResult(proxy=self.name, arch_id=arch.arch_id, score=acc, accuracy=acc,
                           seconds=1.0, steps=4)


def test_replay_cache_is_shared_between_processes(tmp_path):
    cache = tmp_path / "cache.json"
    first, second = CountingProxy(), CountingProxy()
    a = early_stopping.ReplayProxy(first, cache)
    b = early_stopping.ReplayProxy(second, cache)  # opened before `a` trained anything
    t0 = PRESETS["fasternet_t0"]
    ra = a(t0)
    rb = b(t0)
    assert (first.calls, second.calls) == (1, 0)
    assert rb.accuracy == ra.accuracy and rb.checkpoints == ra.checkpoints
    assert b.trained == 0 and a.trained == 1
    b(PRESETS["fasternet_t1"])
    assert second.calls == 1
    # both records survive in the file (no process overwrote the other's)
    assert len(early_stopping.ReplayProxy(CountingProxy(), cache).records) == 2


def test_replay_charges_a_fraction_when_stopped_early(tmp_path):
    proxy = early_stopping.ReplayProxy(CountingProxy(), tmp_path / "c.json")
    r = proxy(PRESETS["fasternet_t0"], callback=lambda step, acc: True)
    assert r.stopped_early and r.steps == 2
    assert proxy.charged == pytest.approx(0.5)


def cand(acc, ms, state="complete", arch_id=None):
    return {"number": 0, "state": state, "arch": {}, "arch_id": arch_id or f"{acc}-{ms}",
            "accuracy": acc, "latency_ms": ms}


def run(device, sampler, cands, source="measured", seed=0, early=False):
    return {"device": device, "source": source, "sampler": sampler, "early": early, "seed": seed,
            "proxy_seconds": 10.0, "overhead_s": 1.0, "candidates": cands}


def test_front_ignores_stopped_and_dominated_candidates():
    front = sq.front_of([cand(0.8, 10), cand(0.7, 12), cand(0.9, 20), cand(0.95, 5, "stopped_early")])
    assert [(c["accuracy"], c["latency_ms"]) for c in front] == [(0.8, 10), (0.9, 20)]


def test_normalized_hypervolume_and_preset_dominance():
    pre = {"d": {"fasternet_t0": (0.5, 20.0), "fasternet_t1": (0.6, 30.0),
                 "fasternet_t2": (0.7, 40.0)}}
    best = run("d", "tpe", [cand(0.9, 10.0)])               # best on both axes -> hv 1
    worst = run("d", "random", [cand(0.5, 40.0)])           # the nadir itself -> hv 0
    mid = run("d", "nsga2", [cand(0.7, 25.0)])              # (0.5, 0.5) in the normalized box
    df = sq.summarize([best, worst, mid], pre).set_index("sampler")
    assert df.loc["tpe", "hv"] == pytest.approx(1.0)
    assert df.loc["random", "hv"] == pytest.approx(0.0)
    assert df.loc["nsga2", "hv"] == pytest.approx(0.5 * 0.5)
    assert df.loc["tpe", "dominates"] == "T0, T1, T2"
    assert df.loc["nsga2", "dominates"] == "T1, T2"  # slower than T0; T2: as accurate, faster
    assert df.loc["random", "dominates"] == "none"  # equal to T0 is not dominating
    assert df.loc["tpe", "wall_s"] == pytest.approx(11.0)


def test_plan_keeps_a_group_in_one_shard_and_puts_early_stopping_last():
    class A:
        devices, seeds, samplers, early = ["x", "y"], [0, 1], ["tpe", "random"], [False, True]

    groups = sq.plan(A)
    assert len(groups) == 8 and all(len(g) == 2 for g in groups)
    assert all(len({(r[1], r[2], r[3]) for r in g}) == 1 for g in groups)
    assert [g[0][2] for g in groups] == [False] * 4 + [True] * 4
    assert [g[0][3] for g in groups[:4]] == [0, 0, 1, 1]


@pytest.mark.slow
def test_benchmark_end_to_end_at_smoke_budget(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "search_quality.py"), "--budget", "smoke",
           "--trials", "3", "--seeds", "0", "--samplers", "random,tpe", "--devices", "amd-epyc,arm",
           "--rounds", "1", "--reference-budget", "smoke", "--reference-seeds", "1",
           "--cache", str(tmp_path / "cache.json"), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## amd-epyc (measured table)" in report and "## arm (derived table)" in report
    assert "Measured end-to-end latency" in report
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 8  # 2 x 2 x 2
    assert (tmp_path / "out" / "fronts.png").stat().st_size > 0


def test_front_check_joins_the_shipped_front_with_the_ground_truth():
    """benchmarks/front_check.py on results/default-arm and the committed sets: every front
    member and preset once, the ground truth the mean of the seeds the sets hold."""
    import pandas as pd

    from proxies.reference import load

    fc = importlib.import_module("front_check")
    result = fc.check(ROOT / "results" / "default-arm", "arm", list(fc.SETS), None)
    table = result["table"].set_index("arch_id")
    front = pd.read_csv(ROOT / "results" / "default-arm" / "pareto.csv")
    assert set(front["arch_id"]) <= set(table.index) and table.index.is_unique
    t0 = PRESETS["fasternet_t0"].arch_id
    runs = load(ROOT / "proxies" / "reference" / "fashion-mnist")
    runs = runs[(runs["arch_id"] == t0) & (runs["protocol_id"] == result["protocol"])]
    assert table.loc[t0, "seeds"] == len(runs) >= 1
    assert table.loc[t0, "ground truth %"] == pytest.approx(runs["accuracy"].mean() * 100, abs=0.01)
    assert "Predicted minus ground truth" in fc.render(result)
    with pytest.raises(SystemExit, match="no study.db"):
        fc.check(ROOT / "results", "arm", list(fc.SETS), None)


def test_pool_search_evaluates_distinct_pool_members_and_bounds_hold():
    import numpy as np
    import pandas as pd

    from search_space import SearchSpace

    gt_bench = importlib.import_module("search_quality_gt")
    space = SearchSpace.default()
    rng = np.random.default_rng(0)
    archs = list({a.arch_id: a for a in (space.sample(rng) for _ in range(30))}.values())
    gt = 88 + 3 * rng.random(len(archs))
    pool = pd.DataFrame({"arch_id": [a.arch_id for a in archs], "arch": archs, "gt": gt,
                         "estimate": gt, "latency_arm": 10 + 100 * rng.random(len(archs))})
    for method in gt_bench.METHODS:
        ids = gt_bench.run_search(method, pool, space, "arm", 8, seed=1)
        assert len(set(ids)) == 8 and set(ids) <= set(pool["arch_id"])
        hv, front = gt_bench.front_hv(pool, ids, "arm")
        assert 0 < hv <= 1 and set(front) <= set(ids)
    # An estimate equal to the ground truth that sees the whole pool finds the pool's front.
    oracle = gt_bench._hv(pool, pool[gt_bench.pareto_mask(pool["gt"], pool["latency_arm"])],
                          "latency_arm")
    assert gt_bench.front_hv(pool, list(pool["arch_id"]), "arm")[0] == pytest.approx(oracle)
    # A seed gives the same run again.
    assert gt_bench.run_search("tpe", pool, space, "arm", 8, seed=1) == \
        gt_bench.run_search("tpe", pool, space, "arm", 8, seed=1)


def test_calibration_choice_refits_on_the_networks_not_picked():
    cc = importlib.import_module("calibration_choice")
    rng = __import__("numpy").random.default_rng(0)
    raw = rng.uniform(1, 60, 71)
    exact = {"measured_ms": list(1.1 * raw + 0.5), "macs": list(raw * 1e7), "raw_ms": {"t": list(raw)}}
    judged = cc.judge(exact, repeats=20)["t"]
    for how in ("at random", "spanning (calibration_archs)"):
        mape, within10, worst, offset, offset_sd = judged[how]
        assert mape < 1e-6 and within10 == 100 and offset == pytest.approx(0.5)
    # a curved truth: the spanning picks bracket it, random ones extrapolate
    curved = {**exact, "measured_ms": list(raw + 0.004 * raw ** 2 + 0.5)}
    judged = cc.judge(curved, repeats=200)["t"]
    assert judged["spanning (calibration_archs)"][2] < judged["at random"][2]  # worst error
