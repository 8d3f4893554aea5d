"""A tiny build (2-architecture space, few repeats), resume, calibration and validation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from latency_tables import (
    TABLE_COLUMNS,
    LatencyTable,
    Protocol,
    accuracy,
    build_table,
    fit_correction,
    make_layer,
    space_layers,
    validate,
)
from latency_tables.layers import LAYER_KEY_VERSION
from search_space import SearchSpace

TINY = {"stages": 2, "widths": [[16], [32]], "depths": [[1], [1, 2]], "n_divs": [4],
        "mlp_ratios": [2], "kernel_sizes": [3], "act": ["relu"], "feature_dim": [64]}
FAST = Protocol(warmup=1, min_repeats=3, max_repeats=3, min_time_s=0.0, context_bytes=1 << 16,
                max_copies=2)
RES = 32


@pytest.fixture()
def space():
    return SearchSpace.from_dict(TINY, source="tiny")


def test_tiny_build(tmp_path, space):
    path = build_table("tiny", space, resolution=RES, proto=FAST, sweeps=2, out_dir=tmp_path)
    df = pd.read_csv(path)
    assert list(df.columns) == TABLE_COLUMNS
    assert len(df) == len(space_layers(space, RES)) == 5
    assert (df["ms"] > 0).all() and (df["repeats"] == 6).all()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["source"] == "measured" and meta["resolution"] == RES and meta["batch"] == 1
    assert meta["layer_key_version"] == LAYER_KEY_VERSION
    assert not list(tmp_path.glob("*.partial.*"))
    table = LatencyTable.load(path)
    for depth in (1, 2):
        arch = space.to_arch({"depth_s1": depth})
        assert table.covers(arch) and table.predict(arch) > 0
    assert len(table.breakdown(space.to_arch({"depth_s1": 2}))) == 6  # stem, block, merge, 2 blocks, head


def test_resume_skips_measured_rows(tmp_path, space):
    class Stop(Exception):
        pass

    def stop_after_two(done, total, key):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        build_table("tiny", space, resolution=RES, proto=FAST, sweeps=1, out_dir=tmp_path,
                    progress=stop_after_two)
    assert len(pd.read_csv(tmp_path / "tiny.partial.csv")) == 2
    seen = []
    build_table("tiny", space, resolution=RES, proto=FAST, sweeps=1, out_dir=tmp_path,
                progress=lambda done, total, key: seen.append((done, total)))
    assert seen[0] == (3, 5) and len(seen) == 3
    assert len(pd.read_csv(tmp_path / "tiny.csv")) == 5


def test_resume_refuses_other_protocol(tmp_path, space):
    def stop(done, total, key):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_table("tiny", space, resolution=RES, proto=FAST, out_dir=tmp_path, progress=stop)
    with pytest.raises(ValueError, match="another protocol"):
        build_table("tiny", space, resolution=RES + 32, proto=FAST, out_dir=tmp_path)


def test_validate_tiny(tmp_path, space):
    path = build_table("tiny", space, resolution=RES, proto=FAST, sweeps=1, out_dir=tmp_path)
    v = validate(LatencyTable.load(path), n=2, seed=0, rounds=1, calib_n=0, space=space)
    assert len(v.rows) == 2 and v.raw.n == 2
    assert (v.rows["measured_ms"] > 0).all()
    assert v.corrected.mape_pct == pytest.approx(v.raw.mape_pct)  # no correction fitted


def test_fit_correction_recovers_linear_model():
    raw = [1.0, 2.0, 5.0, 10.0]
    scale, offset = fit_correction([1.1 * r + 0.3 for r in raw], raw)
    assert scale == pytest.approx(1.1) and offset == pytest.approx(0.3)
    acc = accuracy([10, 20, 30], [10.4, 21.5, 30])
    assert acc.within_5_pct == pytest.approx(200 / 3) and acc.within_10_pct == 100
    assert acc.kendall_tau == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["stem", "merge", "block", "head"])
def test_make_layer_runs(kind, space):
    sig = next(s for s in space_layers(space, RES) if s.kind == kind)
    module, x = make_layer(sig)
    with torch.no_grad():
        out = module(x)
    assert out.shape[0] == 1


def test_merge_builds_keeps_min(tmp_path, space):
    from latency_tables.build import merge_builds

    a = build_table("tiny", space, resolution=RES, proto=FAST, sweeps=1, out_dir=tmp_path / "a")
    b = build_table("tiny", space, resolution=RES, proto=FAST, sweeps=1, out_dir=tmp_path / "b")
    out = merge_builds([a, b], tmp_path / "m.csv")
    da, db, dm = (pd.read_csv(p).set_index("key") for p in (a, b, out))
    assert (dm["ms"] == pd.concat([da["ms"], db["ms"]], axis=1).min(axis=1).loc[dm.index]).all()
    assert json.loads(out.with_suffix(".json").read_text())["protocol"]["sweeps"] == 2



def test_calibration_networks_span_the_space():
    """Evenly spaced ranks by MACs of a seeded pool, its smallest and largest included."""
    from latency_tables.validate import _POOL_PER_NETWORK, calibration_archs, network_macs, sample_archs

    space = SearchSpace.default()
    calib = calibration_archs(space, 10, seed=1000)
    assert len(calib) == 10 and len({a.arch_id for a in calib}) == 10
    macs = [network_macs(a) for a in calib]
    assert macs == sorted(macs)
    pool = sorted(network_macs(a) for a in sample_archs(space, _POOL_PER_NETWORK * 10, 1000))
    assert macs[0] == pool[0] and macs[-1] == pool[-1]
    assert macs[5] == pool[round(5 * (len(pool) - 1) / 9)]
    assert calibration_archs(space, 10, seed=1000) == calib  # seeded
    assert calibration_archs(space, 10, seed=1001) != calib
    with pytest.raises(ValueError, match="needs >= 2"):
        calibration_archs(space, 1)


def test_calibration_networks_of_a_tiny_space(space):
    from latency_tables.validate import calibration_archs

    calib = calibration_archs(space, 10, seed=3, resolution=RES)
    assert len(calib) == 2 and all(space.contains(a) for a in calib)


def test_build_here_brackets_the_layers_with_the_calibration_rounds(tmp_path, space, monkeypatch):
    """One round over the calibration networks before the layers, one after; the correction
    is fitted on the min of the two (both sides see the same stretch of a drifting machine)."""
    from latency_tables import here as here_module
    from latency_tables.validate import calibration_archs

    calls, timings, real_measure, real_build = [], [], here_module.measure_networks, here_module.build_table

    def measure(archs, proto, resolution, rounds=2, progress=None, **kw):
        calls.append(("networks", rounds))
        ms = real_measure(archs, proto, resolution, rounds, progress, **kw)
        ms = [m * (1.5 if len(calls) == 1 else 1.0) for m in ms]  # a slow first round
        timings.append(ms)
        return ms

    def build(*args, **kw):
        calls.append(("layers", None))
        return real_build(*args, **kw)

    monkeypatch.setattr(here_module, "measure_networks", measure)
    monkeypatch.setattr(here_module, "build_table", build)
    monkeypatch.setattr(here_module, "record_probes", lambda table: {"arch_ids": [], "measured_ms": []})
    table = here_module.build_here("tiny", space, proto=FAST, out_dir=tmp_path, resolution=RES,
                                   calibrate_n=2, say=lambda line: None)
    assert calls == [("networks", 1), ("layers", None), ("networks", 1)]
    archs = calibration_archs(space, 2, 1000, RES)
    corr = table.meta["correction"]
    assert corr["fitted_on"] == [a.arch_id for a in archs]
    best = [min(x, y) for x, y in zip(*timings)]
    assert (corr["scale"], corr["offset_ms"]) == pytest.approx(
        fit_correction(best, [table.raw_ms(a) for a in archs]))
    with pytest.raises(ValueError, match="at least 2"):
        here_module.build_here("tiny", space, proto=FAST, out_dir=tmp_path, calibrate_n=1)
