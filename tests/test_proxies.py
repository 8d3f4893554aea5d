"""Proxies: ShortTrain (finite, deterministic, callbacks, failures), every registered
proxy, zero-cost speed, the CLI's error path, the validation's reference repeatability
and resume (with the reference training spied on), and (slow) a tiny validation run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import proxies.validate as validate_module
from proxies import PROXIES, ProxyResult, ShortTrain, StopTrial, ZeroCost, load_dataset
from proxies.__main__ import main
from search_space import PRESETS, ArchConfig

SMALL = ArchConfig(widths=(8, 16, 16, 24), depths=(1, 1, 1, 1), n_divs=(2, 2, 2, 2),
                   mlp_ratios=(2, 2, 2, 2), kernel_sizes=(3, 3, 3, 3), feature_dim=32)


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist")


def test_short_train_smoke_is_finite(data):
    r = ShortTrain(dataset=data, budget="smoke", seed=0)(SMALL)
    assert isinstance(r, ProxyResult) and not r.failed and r.reason == ""
    assert 0.0 <= r.accuracy <= 1.0 and r.score == r.accuracy
    assert math.isfinite(r.tse) and r.tse > 0 and r.seconds > 0 and r.steps == 4
    assert r.checkpoints == ((4, r.accuracy),) and not r.stopped_early
    # Cross-entropy of the validation images: chance (log 10 = 2.30) after 4 tiny steps.
    assert 1.0 < r.val_loss < 4.0


def test_short_train_is_deterministic(data):
    a = ShortTrain(dataset=data, budget="smoke,steps=6", seed=3)(SMALL)
    b = ShortTrain(dataset=data, budget="smoke,steps=6", seed=3)(SMALL)
    c = ShortTrain(dataset=data, budget="smoke,steps=6", seed=4)(SMALL)
    assert (a.accuracy, a.tse, a.val_loss) == (b.accuracy, b.tse, b.val_loss)
    assert a.tse != c.tse and a.val_loss != c.val_loss


def test_callback_checkpoints_and_early_stop(data):
    seen = []
    r = ShortTrain(dataset=data, budget="smoke,steps=8,checkpoints=4", seed=0)(
        SMALL, callback=lambda step, acc: seen.append((step, acc)))
    assert [s for s, _ in seen] == [2, 4, 6, 8] and list(r.checkpoints) == seen

    stopped = ShortTrain(dataset=data, budget="smoke,steps=8,checkpoints=4", seed=0)(
        SMALL, callback=lambda step, acc: step >= 4)
    assert stopped.stopped_early and stopped.steps == 4 and not stopped.failed
    assert stopped.accuracy == seen[1][1]

    def stop(step: int, acc: float) -> None:
        raise StopTrial

    r = ShortTrain(dataset=data, budget="smoke,steps=8,checkpoints=4", seed=0)(SMALL, callback=stop)
    assert r.stopped_early and r.steps == 2


def test_other_callback_exceptions_propagate(data):
    class Pruned(Exception):
        pass

    def prune(step: int, acc: float) -> None:
        raise Pruned

    with pytest.raises(Pruned):
        ShortTrain(dataset=data, budget="smoke", seed=0)(SMALL, callback=prune)


def test_exploding_loss_returns_failed_result(data):
    r = ShortTrain(dataset=data, budget="smoke,lr=1e30,warmup=0", seed=0)(SMALL)
    assert r.failed and r.score == float("-inf") and r.accuracy is None
    assert "loss became" in r.reason or "non-finite" in r.reason


def test_unrunnable_network_returns_failed_result(data):
    r = ShortTrain(dataset=data, budget="smoke,resolution=8", seed=0)(SMALL)
    assert r.failed and r.reason.startswith("step 1:")


@pytest.mark.parametrize("name", list(PROXIES))
def test_every_proxy_gives_a_finite_score(data, name, toy_estimate):
    extra = {"model": toy_estimate("smoke")} if name == "estimate" else {}
    r = PROXIES[name](dataset=data, budget="smoke", seed=0, **extra)(SMALL)
    assert r.proxy == name and not r.failed and math.isfinite(r.score), r.reason


@pytest.mark.parametrize("name", ["synflow", "naswot", "grad_norm", "snip", "params", "flops"])
def test_zero_cost_under_5s_on_t0(data, name):
    proxy = ZeroCost(name, dataset=data, budget="quick", seed=0)
    start = time.perf_counter()
    r = proxy(PRESETS["fasternet_t0"])
    assert time.perf_counter() - start < 5.0 and not r.failed
    assert proxy(PRESETS["fasternet_t0"]).score == r.score  # deterministic


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown zero-cost proxy"):
        ZeroCost("jacob", dataset="fashion-mnist")


@pytest.mark.parametrize("argv, match", [
    (["validate", "--dataset", "nope"], "unknown dataset"),
    (["validate", "--budget", "fast"], "unknown level"),
    (["validate", "--proxies", "snip,foo"], "unknown proxy 'foo'"),
    (["validate", "--reference", "quick,steps=100"], "at least 10x"),
    (["validate", "--n", "2"], "at least 3"),
    (["validate", "--reference-seeds", "0"], "--reference-seeds 0: must be an integer >= 1"),
])
def test_cli_errors_exit_2_with_one_line(capsys, argv, match, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err


def _seeded(points: dict[int, list[float]]) -> pd.DataFrame:
    """A rows table with the reference per seed given in accuracy points."""
    return pd.DataFrame({f"reference_s{seed}": np.array(v) / 100 for seed, v in points.items()})


def test_repeatability_without_seed_noise_is_fully_reliable():
    rep = validate_module.reference_repeatability(
        _seeded({1: [84.0, 80.0, 86.0, 82.0], 2: [84.0, 80.0, 86.0, 82.0]}), [1, 2])
    assert rep.n == 4 and rep.seeds == (1, 2)
    assert rep.within_std == pytest.approx(0, abs=1e-9)
    assert rep.between_std == pytest.approx(np.sqrt(20 / 3))  # std of 80, 82, 84, 86
    assert rep.split_half_tau == pytest.approx(1.0) and rep.reliability == pytest.approx(1.0)


def test_repeatability_known_noise():
    # Arch means 80, 82, 84, 86 (var 20/3); seeds at mean +-1.5 (noise var 4.5): 3 of the 6
    # pairs swap order, so tau = 0; signal = 20/3 - 4.5/2, reliability = signal / (20/3).
    rep = validate_module.reference_repeatability(
        _seeded({1: [81.5, 80.5, 85.5, 84.5], 2: [78.5, 83.5, 82.5, 87.5]}), [1, 2])
    assert rep.within_std == pytest.approx(np.sqrt(4.5))
    assert rep.between_std == pytest.approx(np.sqrt(20 / 3))
    assert rep.split_half_tau == pytest.approx(0.0, abs=1e-12)
    assert rep.reliability == pytest.approx((20 / 3 - 2.25) / (20 / 3))


def test_repeatability_pure_noise_is_unreliable_and_skips_failed_archs():
    rows = _seeded({1: [81.0, 79.0, 81.0, math.nan], 2: [79.0, 81.0, 79.0, 90.0],
                    3: [80.0, 80.0, 80.0, 90.0]})
    rep = validate_module.reference_repeatability(rows, [1, 2, 3])
    assert rep.n == 3 and rep.reliability == 0.0 and rep.between_std == pytest.approx(0)
    assert rep.within_std == pytest.approx(1.0) and rep.split_half_tau == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        validate_module.reference_repeatability(rows, [1])


NAMES = ("short_train", "params")


@pytest.fixture
def spied(monkeypatch):
    """Replace the reference training by a recorder (accuracy 0.8 + seed/100 + a per-arch
    offset), forbid proxy runs and skip the FLOPs count that only orders the jobs; returns
    the list of (arch_id, seed) trained."""
    calls: list[tuple[str, int]] = []

    def reference(arch_dict, dataset, budget, seed, device="cpu"):
        arch_id = ArchConfig.from_dict(arch_dict).arch_id
        calls.append((arch_id, seed))
        return {"arch_id": arch_id, "arch": "x", f"reference_s{seed}": 0.8 + seed / 100
                + int(arch_id[3:], 16) % 7 / 1000, f"reference_s{seed}_seconds": 10.0 * seed}

    def no_proxies(*args):
        raise AssertionError("the proxies were stored; they must not run again")

    monkeypatch.setattr(validate_module, "_evaluate_reference", reference)
    monkeypatch.setattr(validate_module, "_evaluate_proxies", no_proxies)
    monkeypatch.setattr(validate_module, "params_and_flops",
                        lambda *args: SimpleNamespace(flops_g=1.0))
    return calls


def _legacy_rows(path: Path, n: int, seed: int) -> dict[str, float]:
    """A rows.jsonl as written before per-seed references (one reference, seed + 1, as
    ``reference`` / ``reference_seconds``, like the committed proxies/reports/rows.jsonl);
    returns arch_id -> reference."""
    from search_space import SearchSpace

    rng = np.random.default_rng(seed)
    archs = [SearchSpace.default().sample(rng) for _ in range(n)]
    refs = {a.arch_id: 0.85 + i / 100 for i, a in enumerate(archs)}
    with open(path, "w") as f:
        for i, a in enumerate(archs):
            f.write(json.dumps({"key": ",".join(NAMES), "arch_id": a.arch_id, "arch": str(a),
                                "short_train": 0.7 + i / 50, "short_train_seconds": 4.0,
                                "params": float(i), "params_seconds": 0.0,
                                "reference": refs[a.arch_id], "reference_seconds": 40.0}) + "\n")
    return refs


def test_validate_resume_from_one_seed_trains_only_the_missing_seed(tmp_path, spied):
    refs = _legacy_rows(tmp_path / "rows.jsonl", n=3, seed=0)
    one = validate_module.validate(n=3, seed=0, proxies=NAMES, out_dir=tmp_path)
    assert spied == [] and one.settings["repeatability"] is None
    assert one.rows.set_index("arch_id")["reference"].to_dict() == refs

    two = validate_module.validate(n=3, seed=0, proxies=NAMES, reference_seeds=2,
                                   out_dir=tmp_path)
    assert sorted(spied) == sorted((arch_id, 2) for arch_id in refs)
    rows = two.rows.set_index("arch_id")
    assert rows["reference_s1"].to_dict() == refs
    assert np.allclose(rows["reference"], (rows["reference_s1"] + rows["reference_s2"]) / 2)
    assert rows["reference_s1_seconds"].eq(40.0).all() and rows["reference_s2_seconds"].eq(20.0).all()
    assert rows["reference_seconds"].eq(30.0).all()  # one training, not the sum of two
    cost = two.table.set_index("proxy").loc["short_train", "cost_vs_reference"]
    assert cost == pytest.approx(4.0 / 30.0)
    assert two.settings["reference_seeds"] == [1, 2] and two.settings["resumed_rows"] == 3
    assert (two.settings["proxy_runs"], two.settings["reference_trainings"]) == (0, 3)
    assert two.settings["repeatability"]["n"] == 3

    spied.clear()  # seed 2 is stored now: nothing to train, the same rows
    again = validate_module.validate(n=3, seed=0, proxies=NAMES, reference_seeds=2,
                                     out_dir=tmp_path)
    assert spied == [] and again.rows.equals(two.rows)
    three = validate_module.validate(n=3, seed=0, proxies=NAMES, reference_seeds=3,
                                     out_dir=tmp_path)
    assert sorted(spied) == sorted((arch_id, 3) for arch_id in refs)
    assert three.rows["reference_s1"].tolist() == two.rows["reference_s1"].tolist()


def test_validate_with_one_more_proxy_runs_only_that_proxy(tmp_path, spied, monkeypatch):
    refs = _legacy_rows(tmp_path / "rows.jsonl", n=3, seed=0)
    asked = []

    def proxies(arch_dict, dataset, budget, seed, names, device="cpu"):
        asked.append(names)
        arch_id = ArchConfig.from_dict(arch_dict).arch_id
        return {"arch_id": arch_id, "arch": "x", **{n: 0.5 for n in names},
                **{f"{n}_seconds": 1.0 for n in names}}

    monkeypatch.setattr(validate_module, "_evaluate_proxies", proxies)
    report = validate_module.validate(n=3, seed=0, proxies=[*NAMES, "flops"], out_dir=tmp_path)
    assert asked == [("flops",)] * 3 and spied == []
    rows = report.rows.set_index("arch_id")
    assert rows["reference"].to_dict() == refs and rows["flops"].eq(0.5).all()
    assert rows["short_train"].notna().all()  # the stored proxies are kept, not rerun


def test_validate_report_shows_repeatability_and_ceiling(tmp_path, spied):
    _legacy_rows(tmp_path / "rows.jsonl", n=3, seed=0)
    report = validate_module.validate(n=3, seed=0, proxies=NAMES, reference_seeds=2,
                                      out_dir=tmp_path)
    validate_module.write_report(report, tmp_path)
    text = (tmp_path / "report.md").read_text()
    tau = report.settings["repeatability"]["split_half_tau"]
    assert "## Reference repeatability" in text and "--reference-seeds 2" in text
    assert f"noise ceiling: the seed 1 and seed 2 reference trainings rank the architectures " \
           f"at tau = {tau:.3f}" in text
    assert {"reference_s1", "reference_s2"} <= set(pd.read_csv(tmp_path / "rows.csv").columns)


COMMITTED = Path(validate_module.__file__).with_name("reports") / "rows.jsonl"


def test_committed_one_seed_rows_need_only_the_seed_2_references(tmp_path, spied):
    """`python -m proxies validate --n 12 --seed 0 --reference-seeds 2` on the committed
    rows trains the 12 seed-2 references and nothing else."""
    legacy = [line for line in COMMITTED.read_text().splitlines() if '"reference":' in line]
    if not legacy:
        pytest.skip("proxies/reports/rows.jsonl has no rows from before per-seed references")
    (tmp_path / "rows.jsonl").write_text("\n".join(legacy) + "\n")
    stored = {r["arch_id"]: r["reference"] for r in map(json.loads, legacy)}
    names = json.loads(legacy[0])["key"].split(",")  # the proxies registered back then
    report = validate_module.validate(n=12, seed=0, reference_seeds=2, out_dir=tmp_path,
                                      proxies=names)
    assert sorted(spied) == sorted((arch_id, 2) for arch_id in stored) and len(spied) == 12
    assert report.rows.set_index("arch_id")["reference_s1"].to_dict() == stored


@pytest.mark.slow
def test_validate_tiny_run_writes_report(tmp_path):
    from proxies.validate import validate, write_report

    report = validate(n=3, seed=0, budget="smoke", reference="smoke,steps=40",
                      reference_seeds=2, proxies=["short_train", "tse", "params"],
                      out_dir=tmp_path)
    assert list(report.table["proxy"]) == ["short_train", "tse", "params"]
    assert report.table["kendall_tau"].between(-1, 1).all() and len(report.rows) == 3
    rows = report.rows
    assert rows[["reference_s1", "reference_s2"]].notna().all().all()
    assert (rows["reference_s1"] != rows["reference_s2"]).any()  # the seeds differ
    assert np.allclose(rows["reference"], rows[["reference_s1", "reference_s2"]].mean(axis=1))
    rep = report.settings["repeatability"]
    assert rep["n"] == 3 and rep["within_std"] > 0 and -1 <= rep["split_half_tau"] <= 1
    assert 0 <= rep["reliability"] <= 1 or math.isnan(rep["reliability"])
    paths = write_report(report, tmp_path)
    assert all(p.is_file() for p in paths)
    again = validate(n=3, seed=0, budget="smoke", reference="smoke,steps=40",
                     reference_seeds=2, proxies=["short_train", "tse", "params"],
                     out_dir=tmp_path)
    assert again.settings["resumed_rows"] == 3 and again.settings["reference_trainings"] == 0
    assert again.rows["reference"].tolist() == report.rows["reference"].tolist()
