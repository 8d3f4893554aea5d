"""Derived latency tables: the cost model, the profiles, the shipped arm/cpu/gpu tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn as nn

from latency_tables import LatencyTable, available, provenance_note, resolve_alias
from latency_tables.build import TABLE_COLUMNS
from latency_tables.cost_model import DeviceProfile, op_times, predict_ms, trace
from latency_tables.derive import derive_table, load_profile
from latency_tables.devices import DERIVED_DEVICES
from latency_tables.layers import LayerSig
from latency_tables.published import load_networks
from search_space import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = tuple(DERIVED_DEVICES)
PUBLISHED = {"arm": "arm_ms", "cpu": "cpu_ms", "gpu": "gpu_fps"}


def _profile(**kw: object) -> DeviceProfile:
    base = dict(device="toy", batch=1, rates_gmacs={k: 10.0 for k in
                ("conv", "gemm", "matmul", "dwconv", "gconv", "act", "pool")},
                bandwidth_gbs=10.0, eltwise_efficiency=1.0, overhead_us=1.0,
                group_overhead_us=0.5, launches_overlap=False)
    base.update(kw)
    return DeviceProfile(**base)  # type: ignore[arg-type]


def test_trace_kinds_macs_and_bn_folding():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                          nn.GELU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.Conv2d(16, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    ops = trace(model, torch.randn(1, 8, 16, 16)).ops
    assert not ops["op"].str.contains("batch_norm").any()  # folded into the conv before it
    kinds = list(ops["kind"])
    assert kinds[:4] == ["conv", "act", "dwconv", "gemm"]
    assert ops["macs"].iloc[0] == 16 * 16 * 16 * 8 * 9
    assert ops["groups"].iloc[2] == 16
    assert (ops["weight_bytes"].iloc[0] == 16 * 8 * 9 * 4) and ops["act_bytes"].gt(0).all()


def test_roofline_structure():
    prof = _profile(overhead_us=0.0, group_overhead_us=0.0)
    x = torch.randn(1, 64, 32, 32)
    small = trace(nn.Conv2d(64, 64, 3, padding=1, bias=False), x)
    big = trace(nn.Conv2d(64, 128, 3, padding=1, bias=False), x)  # 2x MACs, compute-bound
    t1, t2 = predict_ms(small, prof), predict_ms(big, prof)
    assert t1 > 0 and 1.8 < t2 / t1 < 2.2
    # A memory-bound op: time = bytes / bandwidth.
    relu = op_times(trace(nn.ReLU(), x), prof)
    assert relu["ms"].iloc[0] == pytest.approx(2 * 64 * 32 * 32 * 4 / 10e9 * 1e3)
    # Overheads add per operator; the GPU form takes the max instead.
    assert predict_ms(small, _profile(group_overhead_us=0.0)) == pytest.approx(t1 + 1e-3)
    assert predict_ms(small, _profile(launches_overlap=True)) == pytest.approx(t1)


def test_batch_scaling_keeps_weights_once():
    prof = _profile(overhead_us=0.0, rates_gmacs={k: 1e9 for k in
                    ("conv", "gemm", "matmul", "dwconv", "gconv", "act", "pool")})
    tr = trace(nn.Linear(256, 256), torch.randn(1, 256))  # memory-bound at batch 1
    w = 256 * 256 * 4
    assert predict_ms(tr, prof, batch=4) < 4 * predict_ms(tr, prof, batch=1)
    assert predict_ms(tr, prof, batch=1) == pytest.approx((w + 256 * 4 + 2 * 256 * 4) / 1e10 * 1e3,
                                                          rel=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_profiles_load(device):
    p = load_profile(device)
    assert p.device == device and p.batch == (32 if device == "gpu" else 1)
    assert all(v > 0 for v in p.rates_gmacs.values()) and p.bandwidth_gbs > 0
    loo = p.fit["leave_one_out"]["all"]
    assert loo["mape_pct"] <= 12.0 and loo["kendall_tau"] >= 0.85


@pytest.mark.parametrize("device", DEVICES)
def test_shipped_derived_table(device):
    assert device in available()
    table = LatencyTable.load(device)
    assert table.source == "derived" and list(table.rows.columns) == TABLE_COLUMNS
    d = table.meta["derived"]
    assert d["profile"].endswith(f"profiles/{device}.json") and d["published_rows"]
    assert "leave_one_out" in d and d["measure_command"]
    for name in ("fasternet_t0", "fasternet_t1", "fasternet_t2"):
        assert table.covers(PRESETS[name])
    pub = load_networks().set_index("network")[PUBLISHED[device]]
    for name, row in (("fasternet_t0", "FasterNet-T0"), ("fasternet_t1", "FasterNet-T1")):
        if device == "gpu":
            got, want = table.predict_throughput(PRESETS[name]), pub[row]
        else:
            got, want = table.predict(PRESETS[name]), pub[row]
        assert abs(got / want - 1) < 0.25, (device, name, got, want)


@pytest.mark.parametrize("alias,name", [("cortex-a72", "arm"), ("i9-9900x", "cpu"),
                                        ("rtx2080ti", "gpu"), ("RTX2080Ti", "gpu"),
                                        ("amd-epyc", "amd-epyc")])
def test_aliases(alias, name):
    assert resolve_alias(alias) == name
    if name in DERIVED_DEVICES:
        assert LatencyTable.load(alias).name == name


@pytest.mark.parametrize("device", DEVICES)
def test_provenance_note(device):
    note = provenance_note(LatencyTable.load(device))
    assert "DERIVED" in note and DERIVED_DEVICES[device]["measure_command"] in note
    assert "python -m latency_tables build" in note


def test_provenance_note_measured():
    rows = pd.DataFrame({"key": ["x"], "ms": [1.0]})
    table = LatencyTable(rows=rows, meta={"source": "measured", "date": "2026-01-01",
                                          "device": {"cpu_model": "Some CPU"}}, name="some")
    note = provenance_note(table)
    assert "measured on Some CPU" in note and "2026-01-01" in note


def test_derive_table_small(tmp_path):
    sigs = [LayerSig("stem", 224, 3, 40, 4), LayerSig("block", 56, 40, 40, n_div=4, mlp_ratio=2.0,
                                                      kernel_size=3, act="gelu"),
            LayerSig("merge", 56, 40, 80, 2),
            LayerSig("head", 7, 320, 1280, act="gelu", num_classes=1000)]
    prof = load_profile("arm")
    path = derive_table("arm", prof, layers=sigs, out_dir=tmp_path, provenance={"test": True})
    table = LatencyTable.load(path)
    assert table.source == "derived" and len(table.rows) == 4 and (table.rows["ms"] > 0).all()
    assert table.meta["derived"]["test"] is True
