"""Derived latency tables: the cost model, the profiles, the shipped arm/cpu/gpu tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from latency_tables import LatencyTable, available, provenance_note, resolve_alias
from latency_tables.build import TABLE_COLUMNS
from latency_tables.cost_model import DeviceProfile, op_times, predict_ms, trace
from latency_tables.derive import derive_table, load_profile
from latency_tables.devices import DERIVED_DEVICES, derivable_spec
from latency_tables.layers import LAYER_KEY_VERSION, LayerSig
from latency_tables.published import load_networks
from search_space import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = tuple(DERIVED_DEVICES)


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
    assert p.device == device and p.batch == derivable_spec(device).batch
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
    pub = load_networks().set_index("network")[derivable_spec(device).published_column]
    for name, row in (("fasternet_t0", "FasterNet-T0"), ("fasternet_t1", "FasterNet-T1")):
        if derivable_spec(device).throughput:
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
    assert table.meta["layer_key_version"] == LAYER_KEY_VERSION


# --- issue 15: identifiability, activation cost, GPU small kernels, honest sidecars

def _toy_fit_data():
    from latency_tables.cost_model import OpArrays
    from latency_tables.profile_fit import FitData

    torch.manual_seed(0)
    traces = [trace(nn.Sequential(*[nn.Conv2d(c, c, 3, padding=1, bias=False)] * k, nn.ReLU()),
                    torch.randn(1, c, s, s)) for c, s, k in
              ((8, 32, 1), (16, 16, 2), (32, 8, 3), (64, 8, 1), (8, 64, 2), (24, 24, 1))]
    truth = _profile(device="cpu", overhead_us=5.0)
    ms = OpArrays(traces, 1).totals_ms(truth.to_vector(), truth)
    n = len(traces)
    return FitData([f"t{i}" for i in range(n)], np.ones(n, bool), ms, np.ones(n),
                   OpArrays(traces, 1))


def test_identifiability_flags_unexercised_constants():
    from latency_tables.identifiability import identifiability
    from latency_tables.profile_fit import INITIAL, fit_profile

    data = _toy_fit_data()
    prof = fit_profile("cpu", data)
    ident = identifiability("cpu", data, prof, n_boot=8)
    names = [c.name for c in ident.constants]
    assert names == list(prof.constant_names())
    by = {c.name: c for c in ident.constants}
    assert by["rate_matmul"].verdict == "prior" and by["rate_matmul"].contraction < 0.05
    assert by["rate_matmul"].fitted == pytest.approx(INITIAL["cpu"].rates_gmacs["matmul"])
    assert by["rate_conv"].contraction > 0.5 and by["rate_conv"].verdict != "prior"
    assert all(c.boot_p05 <= c.boot_p95 for c in ident.constants)
    assert "rate_matmul" in ident.to_dict()["resting_on_prior"]


@pytest.mark.parametrize("device", DEVICES)
def test_report_and_sidecar_name_prior_bound_constants(device):
    from latency_tables.derive import REPORTS_DIR

    md = (REPORTS_DIR / f"derived_{device}.md").read_text()
    assert "## Identifiability of the profile's constants" in md
    prof = load_profile(device)
    for name in prof.constant_names():
        assert f"| {name} |" in md
    ident = prof.fit["identifiability"]
    assert set(ident["constants"]) == set(prof.constant_names())
    side = LatencyTable.load(device).meta["derived"]
    assert side["resting_on_prior"] == ident["resting_on_prior"]
    for name in ident["resting_on_prior"]:
        assert f"`{name}`" in md


@pytest.mark.parametrize("device", DEVICES)
def test_loo_figures_regenerate_from_report_rows(device):
    """The sidecar's and the profile's LOO figures are those of the per-network report rows."""
    from latency_tables.derive import REPORTS_DIR
    from latency_tables.validate import accuracy

    rows = pd.read_csv(REPORTS_DIR / f"derived_{device}.csv")
    acc = accuracy(rows["measured_ms_per_batch"], rows["loo_ms_per_batch"])
    side = LatencyTable.load(device).meta["derived"]["leave_one_out"]
    assert side == load_profile(device).fit["leave_one_out"]
    assert side["all"]["mape_pct"] == pytest.approx(acc.mape_pct, abs=1e-3)
    worst = rows.loc[rows["error_pct"].abs().idxmax()]
    assert side["worst"]["network"] == worst["network"]
    note = provenance_note(LatencyTable.load(device))
    assert f"MAPE {side['all']['mape_pct']:.1f} %" in note and worst["network"] in note


@pytest.mark.parametrize("device", DEVICES)
def test_activation_cost_is_measured_and_sourced(device):
    import json
    from pathlib import Path

    from latency_tables.profile_fit import ACTIVATION_COSTS

    prof = load_profile(device)
    ratio, source = ACTIVATION_COSTS[device]
    assert (prof.act_cost_ratio, prof.act_cost_source) == (ratio, source)
    assert "act_cost_ratio" not in prof.constant_names()  # measured, never fitted
    side = LatencyTable.load(device).meta["derived"]["profile_constants"]
    assert side["act_cost_ratio"] == ratio and side["act_cost_source"] == source
    if source.startswith("none"):  # no measurement to check against
        return
    report = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "reports"
                         / "activation_cost.json").read_text())
    by_set = {r["capability"]: r for r in report["results"]}
    kernel_set = source.split("kernel set '")[1].split("'")[0]
    assert ratio == pytest.approx(by_set[kernel_set]["gelu_over_relu_median"], abs=0.005)
    # the exp class (SiLU, softmax) from the same run and kernel set
    assert prof.exp_cost_ratio == pytest.approx(by_set[kernel_set]["silu_over_relu_median"],
                                                abs=0.005)
    assert side["exp_cost_ratio"] == prof.exp_cost_ratio


@pytest.mark.parametrize("device", ("arm", "cpu"))
@pytest.mark.parametrize("preset", ("fasternet_t0", "fasternet_t2"))
def test_gelu_relu_gap_on_cpus(device, preset):
    table = LatencyTable.load(device)
    gelu = dataclasses.replace(PRESETS[preset], act="gelu")  # T2 ships with ReLU
    relu = dataclasses.replace(PRESETS[preset], act="relu")
    assert table.predict(gelu) > 1.02 * table.predict(relu)


def test_activation_ratio_scales_act_ops():
    x = torch.randn(1, 16, 16, 16)
    tr = trace(nn.GELU(), x)
    base = _profile(overhead_us=0.0)
    t1 = predict_ms(tr, base)
    assert predict_ms(tr, dataclasses.replace(base, act_cost_ratio=3.0)) == pytest.approx(3 * t1)


def test_gpu_kernel_overhead():
    x = torch.randn(1, 64, 16, 16)
    dw = trace(nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), x)
    gpu = _profile(launches_overlap=True, overhead_us=0.0, kernel_overhead_us=0.0,
                   bandwidth_gbs=1e6)
    t = predict_ms(dw, gpu)
    assert predict_ms(dw, dataclasses.replace(gpu, kernel_overhead_us=5.0)) == pytest.approx(t + 5e-3)
    names = load_profile("gpu").constant_names()
    assert "kernel_overhead_us" in names
    assert "group_overhead_us" not in names  # unused by the GPU form: not fitted
    assert "saturation_depth" not in names  # the occupancy term was removed (module doc)


def test_batched_matmul_pays_per_matrix_on_cpus_only():
    class Attn(nn.Module):  # q k^T over 12 windows x heads of 49 tokens, head dim 32
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.reshape(12, 49, 32)
            return q @ q.transpose(-2, -1)

    tr = trace(Attn(), torch.randn(1, 12, 49, 32))
    row = tr.ops[tr.ops["kind"] == "matmul"].iloc[0]
    assert row["groups"] == 12 and row["macs"] == 12 * 49 * 49 * 32
    cpu = _profile(overhead_us=0.0, group_overhead_us=0.0)
    t = predict_ms(tr, cpu)
    assert predict_ms(tr, dataclasses.replace(cpu, matmul_overhead_us=2.0)) == pytest.approx(
        t + 12 * 2e-3)
    gpu = _profile(launches_overlap=True, overhead_us=0.0)
    assert predict_ms(tr, dataclasses.replace(gpu, matmul_overhead_us=2.0)) == pytest.approx(
        predict_ms(tr, gpu))  # one batched kernel on a GPU
    assert "matmul_overhead_us" in load_profile("cpu").constant_names()
    assert "matmul_overhead_us" not in load_profile("gpu").constant_names()


def test_exp_class_activations_have_their_own_measured_ratio():
    x = torch.randn(1, 16, 8, 8)
    kinds = {name: trace(m, x).ops["kind"].iloc[0] for name, m in
             (("gelu", nn.GELU()), ("silu", nn.SiLU()), ("sigmoid", nn.Sigmoid()),
              ("softmax", nn.Softmax(dim=-1)), ("relu", nn.ReLU()))}
    assert kinds == {"gelu": "act", "silu": "exp", "sigmoid": "exp", "softmax": "exp",
                     "relu": "eltwise"}
    base = _profile(overhead_us=0.0)
    silu, gelu = trace(nn.SiLU(), x), trace(nn.GELU(), x)
    t = predict_ms(silu, base)
    assert predict_ms(silu, dataclasses.replace(base, exp_cost_ratio=3.0)) == pytest.approx(3 * t)
    assert predict_ms(silu, dataclasses.replace(base, act_cost_ratio=3.0)) == pytest.approx(t)
    assert predict_ms(gelu, dataclasses.replace(base, exp_cost_ratio=3.0)) == pytest.approx(t)


def test_views_are_free_and_hidden_contiguous_copies_are_paid():
    class Unfold(nn.Module):  # MobileViT's unfold: transpose, then reshape (a copy + a view)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(1, -1)

    ops = trace(Unfold(), torch.randn(1, 8, 16)).ops
    assert list(ops["op"]) == ["clone"]  # `_unsafe_view` after the copy moves no data
    assert ops["act_bytes"].iloc[0] == 2 * 8 * 16 * 4
    ln = nn.LayerNorm(16, elementwise_affine=False)
    x = torch.randn(1, 8, 16)
    contiguous = trace(ln, x).ops["act_bytes"].iloc[0]
    strided = trace(ln, x.transpose(1, 2).contiguous().transpose(1, 2)).ops["act_bytes"].iloc[0]
    assert strided == contiguous + 2 * 8 * 16 * 4  # + read strided, write contiguous


def test_published_attention_is_traced_in_explicit_form():
    from timm.layers import use_fused_attn

    from latency_tables.published import NETWORKS, build_network

    fused = use_fused_attn()
    model = build_network(NETWORKS["MobileViT-XXS"])
    assert use_fused_attn() == fused  # the global flag is restored
    ops = trace(model, torch.randn(1, 3, 64, 64)).ops
    assert not ops["op"].str.contains("scaled_dot_product").any()
    assert (ops["op"] == "_softmax").sum() == 9 and (ops["kind"] == "matmul").sum() == 18
