"""Reference sets (`proxies.reference`): the protocol, the stratified design and its split,
training with resume / shards / failures on a small ImageFolder, the statistics of the
report on rows with known answers, loading, and the CLI's error path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import proxies.reference.build as build_module
from proxies.__main__ import main
from proxies.reference import (
    Member,
    Protocol,
    ReferenceSet,
    design_set,
    load,
    pilot_members,
    read_runs,
    run_missing,
)
from proxies.reference.report import seed_noise, summarize, write_report
from search_space import PRESETS, ArchConfig, SearchSpace

SMALL = ArchConfig(widths=(8, 16, 16, 24), depths=(1, 1, 1, 1), n_divs=(2, 2, 2, 2),
                   mlp_ratios=(2, 2, 2, 2), kernel_sizes=(3, 3, 3, 3), feature_dim=32)
TINY = Protocol(epochs=2, batch_size=8, lr=1e-3, resolution=32)


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> str:
    """An ImageFolder without val/: 2 classes x 24 images, 16x16 grayscale."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 100, (16, 16)) + 120 * c
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(root / "train" / name / f"{i}.png")
    return f"imagefolder:{root}"


def test_protocol_budget_and_id():
    p = Protocol(epochs=3, batch_size=256)
    b = p.budget(60000, 10000)
    assert b.steps == 3 * (60000 // 256) and b.checkpoints == 3 and b.augment
    assert b.subset == 60000 and b.val_size == 10000 and b.batch_size == 256
    assert p.protocol_id == "e3-b256-lr0.001-r32"
    assert Protocol(augment=False).protocol_id.endswith("augment=False")
    assert Protocol.parse("epochs=30,lr=5e-4") == Protocol(epochs=30, lr=5e-4)
    assert Protocol.from_dict(p.to_dict()) == p
    for bad in ("epochs=0", "epoch=3", "lr=abc", "epochs=2.5", "lr=nan", "epochs"):
        with pytest.raises(ValueError):
            Protocol.parse(bad)
    with pytest.raises(ValueError, match="unknown field"):
        Protocol.from_dict({"epochs": 1, "optimizer": "sgd"})


def test_design_is_stratified_split_and_reproducible():
    a = design_set(dataset="fashion-mnist", n=10, seed=3)
    b = design_set(dataset="fashion-mnist", n=10, seed=3)
    assert [m.to_dict() for m in a.members] == [m.to_dict() for m in b.members]
    sampled = [m for m in a.members if m.role == "sampled"]
    assert len(sampled) == 10 and sorted({m.stratum for m in sampled}) == [0, 1, 2, 3, 4]
    assert all(sum(m.stratum == k for m in sampled) == 2 for k in range(5))
    roles = {m.role for m in a.members}
    assert {"fasternet_t0", "fasternet_t1", "fasternet_t2"} <= roles
    splits = [m.split for m in a.members]
    assert abs(splits.count("tune") - splits.count("holdout")) <= 1
    assert len({m.arch_id for m in a.members}) == len(a.members)
    # Strata follow the latency table: every stratum-k member is within the k-th edges.
    edges = a.design["latency_edges_ms"]
    from latency_tables import LatencyTable

    arm = LatencyTable.load("arm")
    for m in sampled:
        ms = arm.predict(m.arch)
        assert edges[m.stratum] - 1e-3 <= ms <= edges[m.stratum + 1] + 1e-3
    c = design_set(dataset="fashion-mnist", n=10, seed=4)
    assert [m.arch_id for m in c.members] != [m.arch_id for m in a.members]
    with pytest.raises(ValueError, match="multiple"):
        design_set(dataset="fashion-mnist", n=12)


def test_pilot_spans_the_space():
    members = {m.role: m.arch for m in pilot_members()}
    space = SearchSpace.default()
    assert members["fasternet_t1"] == PRESETS["fasternet_t1"]
    assert space.contains(members["smallest"]) and space.contains(members["largest"])
    from search_space import count_params

    sizes = [count_params(members[r]) for r in ("smallest", "fasternet_t0", "fasternet_t2",
                                                 "largest")]
    assert sizes == sorted(sizes)


def _set(data: str, seeds=(0, 1), archs=(SMALL,)) -> ReferenceSet:
    members = tuple(Member(a, f"a{i}", -1, "tune" if i % 2 == 0 else "holdout")
                    for i, a in enumerate(archs))
    return ReferenceSet(dataset=data, members=members, seeds=seeds, protocols=(TINY,),
                        design={"pilot": True})


def test_order_cheapest_or_longest_first(folder_data, tmp_path):
    big = SMALL.replace(widths=(16, 32, 48, 64))
    rset = _set(folder_data, archs=(SMALL, big), seeds=(0,))
    for order, expected in (("cheapest", SMALL), ("longest", big)):
        folder = tmp_path / order
        rset.save(folder)
        assert run_missing(rset, folder, device="cpu", limit=1, order=order) == 1
        assert list(read_runs(folder)["arch_id"]) == [expected.arch_id]
    with pytest.raises(ValueError, match="order 'random'"):
        run_missing(rset, tmp_path / "x", device="cpu", order="random")


def test_train_resume_and_shards(folder_data, tmp_path):
    other = SMALL.replace(widths=(8, 16, 24, 32))
    rset = _set(folder_data, archs=(SMALL, other))
    rset.save(tmp_path)
    assert ReferenceSet.load(tmp_path) == rset
    lines = []
    # Two shards together train every run once.
    n0 = run_missing(rset, tmp_path, device="cpu", shard=(0, 2), log=lines.append)
    n1 = run_missing(rset, tmp_path, device="cpu", shard=(1, 2))
    assert n0 + n1 == 4 and len(lines) == n0
    runs = read_runs(tmp_path)
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    row = runs.iloc[0]
    assert [e["epoch"] for e in row["epochs"]] == [1, 2]
    assert all(np.isfinite(e["train_loss"]) for e in row["epochs"])
    assert row["accuracy"] == row["epochs"][-1]["accuracy"]
    assert row["device"] == "cpu" and row["protocol_id"] == TINY.protocol_id
    assert "carved" in row["heldout"] and row["n_train"] + row["n_heldout"] == 48
    # Resume: nothing left to do.
    assert run_missing(rset, tmp_path, device="cpu") == 0
    # The same seed gives the same run (CPU: exact).
    again = build_module.train_one({"protocol": TINY.to_dict(), "arch": SMALL.to_dict(),
                                    "seed": 0, "role": "a0"}, folder_data, "cpu")
    first = runs[(runs["arch_id"] == SMALL.arch_id) & (runs["seed"] == 0)].iloc[0]
    assert again["accuracy"] == first["accuracy"] and again["epochs"] == first["epochs"]


def test_failed_runs_are_recorded_and_retried(folder_data, tmp_path, monkeypatch):
    rset = _set(folder_data, seeds=(0,))
    real = build_module.train_one

    def nan_run(plan, dataset, device, threads=1, workers=1):
        row = real(plan, dataset, device, threads, workers)
        return {**row, "status": "failed", "reason": "training loss became nan at step 3",
                "accuracy": None}

    monkeypatch.setattr(build_module, "train_one", nan_run)
    assert run_missing(rset, tmp_path, device="cpu") == 1
    runs = read_runs(tmp_path)
    assert list(runs["status"]) == ["failed"] and "nan" in runs["reason"].iloc[0]
    rset.save(tmp_path)
    assert load(tmp_path).empty  # a failed run is never a result
    monkeypatch.setattr(build_module, "train_one", real)
    assert run_missing(rset, tmp_path, device="cpu") == 1  # retried
    assert list(read_runs(tmp_path)["status"]) == ["ok"]
    assert len(load(tmp_path)) == 1


def test_malformed_rows_name_the_line(tmp_path):
    (tmp_path / "runs-x.jsonl").write_text('{"protocol_id": "p", "arch_id": "a", "seed": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"runs-x.jsonl:2"):
        read_runs(tmp_path)


def _synthetic(tmp_path: Path, noise: float) -> ReferenceSet:
    """A 10-architecture set whose accuracy rises with params, plus seed noise."""
    rset = design_set(dataset="fashion-mnist", n=10, seed=0, seeds=(0, 1, 2),
                      protocols=(TINY,))
    rset.save(tmp_path)
    from search_space import count_params

    rng = np.random.default_rng(0)
    with open(tmp_path / "runs-test.jsonl", "w") as f:
        for m in rset.members:
            base = 0.85 + 0.01 * np.log(count_params(m.arch))
            for s in rset.seeds:
                f.write(json.dumps({"protocol_id": TINY.protocol_id, "arch_id": m.arch_id,
                                    "seed": s, "status": "ok", "accuracy": base + noise * rng.normal(),
                                    "seconds": 1.0, "device": "cpu", "machine": "test",
                                    "heldout": "test split", "torch": "x", "role": m.role}) + "\n")
    return rset


def test_report_statistics_on_known_rows(tmp_path):
    _synthetic(tmp_path, noise=0.0)
    (s,) = summarize(tmp_path)
    assert s.complete == 13 and s.seeds == (0, 1, 2)
    assert s.noise_ceiling == pytest.approx(1.0)  # seeds agree exactly
    assert s.repeatability["within_std"] == pytest.approx(0.0)
    params = s.baselines.set_index("predictor").loc["params"]
    assert params["all"] == pytest.approx(1.0)  # accuracy is monotone in params here
    assert params["n_tune"] + params["n_holdout"] == 13
    paths = write_report(tmp_path)
    text = paths[0].read_text()
    assert "noise ceiling" in text and "reaches the goal" in text and paths[1].stat().st_size > 0


def test_report_noise_lowers_the_ceiling(tmp_path):
    _synthetic(tmp_path, noise=0.05)
    (s,) = summarize(tmp_path)
    assert s.noise_ceiling < 0.8 and "does not reach" in "\n".join(
        write_report(tmp_path)[0].read_text().splitlines())


def test_seed_noise_of_an_incomplete_set():
    """Seed 1 on 3 of 6 architectures: the noise pools their pairs, the spread is seed 0's."""
    archs = pd.DataFrame({"acc_s0": [0.90, 0.91, 0.92, 0.93, 0.94, 0.95],
                          "acc_s1": [0.901, 0.909, 0.921, np.nan, np.nan, np.nan],
                          "acc_s2": [np.nan] * 6})
    noise = seed_noise(archs, (0, 1, 2))
    # Each pair differs by 0.1 points: within-pair variance 0.1^2 / 2, 1 df per pair.
    assert noise["noise_df"] == 3 and noise["n_multi"] == 3 and noise["n_one_seed"] == 6
    assert noise["noise_std"] == pytest.approx(0.1 / np.sqrt(2))
    one_var = np.var([90, 91, 92, 93, 94, 95], ddof=1)
    icc = (one_var - 0.005) / one_var
    assert noise["icc"] == pytest.approx(icc)
    assert noise["ceiling_model"] == pytest.approx(2 / np.pi * np.arcsin(icc))
    assert noise["perfect_vs_one_seed"] > noise["ceiling_model"]
    assert seed_noise(archs[["acc_s0"]], (0,)) is None  # one seed: nothing to pool
    assert seed_noise(archs.assign(acc_s1=np.nan), (0, 1, 2)) is None


def test_report_ceiling_from_an_incomplete_set(tmp_path):
    """Before every seed is in, the ceiling is measured over the architectures with both."""
    _synthetic(tmp_path, noise=0.0)
    runs = tmp_path / "runs-test.jsonl"
    rows = [json.loads(line) for line in runs.read_text().splitlines()]
    keep = {r["arch_id"] for r in rows[:15]}  # seeds 1, 2 of five architectures only
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows
                            if r["seed"] == 0 or r["arch_id"] in keep))
    (s,) = summarize(tmp_path)
    assert s.complete == 5 and s.pair_ns == [5, 5, 5]
    assert s.noise_ceiling == pytest.approx(1.0) and s.noise["n_one_seed"] == 13
    text = write_report(tmp_path)[0].read_text()
    assert "seeds 0/1: 1.000 (N=5)" in text and "(measured, 1.000) reaches the goal" in text


def test_load_joins_members(tmp_path):
    rset = _synthetic(tmp_path, noise=0.0)
    df = load(tmp_path)
    assert len(df) == 3 * len(rset.members)
    assert {"accuracy", "seed", "split", "role", "params_m", "flops_g",
            "latency_ms_arm"} <= set(df.columns)
    assert set(df["split"]) == {"tune", "holdout"}
    with pytest.raises(FileNotFoundError, match="no reference set"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist-nope"], "unknown dataset"),
    (["--shard", "2/2"], "--shard"),
    (["--protocol", "epochs=0"], "epochs"),
    (["--seeds", "0,0"], "--seeds"),
    (["--workers", "0"], "--workers"),
    (["--device", "tpu"], "device"),
    (["--n", "7"], "multiple"),
])
def test_cli_errors_exit_2(argv, message, tmp_path, capsys):
    code = main(["reference", "build", "--out", str(tmp_path / "set"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_set_file(tmp_path, capsys):
    (tmp_path / "set.json").write_text("{not json")
    assert main(["reference", "build", "--out", str(tmp_path)]) == 2
    assert "not a reference set file" in capsys.readouterr().err
    assert main(["reference", "report", str(tmp_path / "missing")]) == 2


def test_cli_builds_a_pilot_and_reports(folder_data, tmp_path, capsys):
    out = tmp_path / "pilot"
    code = main(["reference", "build", "--pilot", "--dataset", folder_data, "--out", str(out),
                 "--protocol", "epochs=1,batch_size=8", "--seeds", "0", "--only", "smallest",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    runs = read_runs(out)
    assert len(runs) == 1 and runs["role"].iloc[0] == "smallest"
    assert main(["reference", "report", str(out)]) == 0
    assert "smallest" in (out / "report.md").read_text()
    assert isinstance(load(out), pd.DataFrame)


def test_validate_against_a_set_uses_only_the_split(tmp_path, capsys):
    _synthetic(tmp_path / "set", noise=0.0)
    out = tmp_path / "out"
    code = main(["validate", "--against", str(tmp_path / "set"), "--split", "holdout",
                 "--proxies", "params,flops", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = pd.read_csv(out / "rows.csv")
    assert set(rows["split"]) == {"holdout"} and len(rows) >= 3
    table = pd.read_csv(out / "correlations.csv").set_index("proxy")
    # The synthetic accuracy is monotone in params (head for 1000 classes vs 10: same order).
    assert table.loc["params", "kendall_tau"] > 0.9
    assert {"top5_overlap", "tau_vs_ceiling"} <= set(table.columns)
    text = (out / "report.md").read_text()
    assert "holdout half" in text and "noise ceiling" in text
    assert main(["validate", "--against", str(tmp_path / "set"), "--split", "middle",
                 "--proxies", "params", "--out", str(out)]) == 2
    assert main(["validate", "--against", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_validate_against_a_partial_set_with_min_seeds(tmp_path, capsys):
    rset = _synthetic(tmp_path / "set", noise=0.0)
    # Seeds 1 and 2 of all but three architectures are missing: a partial set.
    path = tmp_path / "set" / "runs-test.jsonl"
    keep = {m.arch_id for m in rset.members[:3]}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows
                            if r["seed"] == 0 or r["arch_id"] in keep))
    out = tmp_path / "out"
    args = ["validate", "--against", str(tmp_path / "set"), "--split", "all",
            "--proxies", "params", "--out", str(out)]
    assert main(args) == 0  # three architectures have every seed: enough to rank
    assert len(pd.read_csv(out / "rows.csv")) == 3
    assert main([*args, "--min-seeds", "1"]) == 0
    assert len(pd.read_csv(out / "rows.csv")) == len(rset.members)
    assert "1-3 seeds per architecture; a partial set" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main([*args, "--min-seeds", "0"]) == 2
    assert "--min-seeds 0" in capsys.readouterr().err


def test_validate_against_too_few_seed_pairs_uses_the_variance_components(tmp_path, capsys):
    rset = _synthetic(tmp_path / "set", noise=0.0)
    path = tmp_path / "set" / "runs-test.jsonl"
    keep = {m.arch_id for m in rset.members[:2]}  # two pairs of seeds: no tau to measure
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows
                            if r["seed"] == 0 or r["arch_id"] in keep))
    out = tmp_path / "out"
    assert main(["validate", "--against", str(tmp_path / "set"), "--split", "all",
                 "--proxies", "params", "--out", str(out), "--min-seeds", "1"]) == 0
    text = (out / "report.md").read_text()
    # No seed noise at all: ICC 1, the ceiling 1, a perfect predictor 1 against one seed.
    assert "from the set's variance components" in text and "is 1.000" in text
    assert "would reach about 1.00 against one seed" in text
    table = pd.read_csv(out / "correlations.csv").set_index("proxy")
    assert table.loc["params", "tau_vs_ceiling"] == pytest.approx(table.loc["params", "kendall_tau"])


def test_a_set_of_named_networks_only():
    """--n 0: the presets and the extras (a search's front to re-check), nothing sampled."""
    rset = design_set(dataset="fashion-mnist", n=0, seed=0, extras={"front1": SMALL})
    assert sorted(m.role for m in rset.members) == ["fasternet_t0", "fasternet_t1",
                                                     "fasternet_t2", "front1"]
    assert rset.design["pool"] == 0 and rset.design["latency_edges_ms"] == []
    with pytest.raises(ValueError, match="multiple"):
        design_set(dataset="fashion-mnist", n=-5)


def test_extras_join_the_set_and_bad_files_exit_2(tmp_path, capsys):
    extra = tmp_path / "front.yaml"
    SMALL.save(extra)
    rset = design_set(dataset="fashion-mnist", n=5, seed=0, extras={"front": SMALL})
    assert [m.role for m in rset.members if m.arch_id == SMALL.arch_id] == ["front"]
    assert rset.design["extras"] == ["front"]
    (tmp_path / "bad.yaml").write_text("widths: [8, 16\n")
    for spec in (f"front={tmp_path / 'bad.yaml'}", f"front={tmp_path / 'missing.yaml'}", "front"):
        code = main(["reference", "build", "--out", str(tmp_path / "set"), "--n", "5",
                     "--extra", spec, "--limit", "0", "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "set").exists()  # nothing written before the error


def test_report_compares_protocols(tmp_path):
    other = TINY.replace(lr=2e-3)
    rset = design_set(dataset="fashion-mnist", n=5, seed=0, seeds=(0, 1), protocols=(TINY, other))
    rset.save(tmp_path)
    with open(tmp_path / "runs-test.jsonl", "w") as f:
        for i, m in enumerate(rset.members):
            for p, shift in ((TINY, 0.0), (other, 0.01)):
                for s in rset.seeds:
                    f.write(json.dumps({"protocol_id": p.protocol_id, "arch_id": m.arch_id,
                                        "seed": s, "status": "ok", "accuracy": 0.8 + i / 100 + shift,
                                        "seconds": 1.0, "device": "cpu", "machine": "t",
                                        "heldout": "test split", "torch": "x"}) + "\n")
    text = write_report(tmp_path)[0].read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {TINY.protocol_id} |"))
    assert row.split("|")[3:6] == [" 8 ", " 1.000 ", " -1.00 "]
