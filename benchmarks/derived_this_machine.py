"""Check the derived-table method where the truth is at hand: this machine's CPU.

Issue 4, requirement 5. The cost model (`latency_tables.cost_model`) is calibrated for this
CPU from whole-network latencies of six networks only, measured here with the published CPU
protocol (one thread, batch 1, 224x224, BN folded; `latency_tables.measure.time_network`),
starting from (and regularized towards) the i9-9900X profile. It then predicts the 50
validation architectures the measured table `amd-epyc` was validated on
(`reports/amd-epyc_validate_n50_seed0.csv`: same seeded sample, same measurements), and the
two errors are reported side by side in `reports/derived_this_machine.{md,csv}`.

`--calib validation` needs no timing: the six calibration networks are drawn (seeded) from
the validation sample itself, using its measurements, and the errors of both predictors are
reported on the other 44 (`reports/derived_this_machine_valcalib.{md,csv}`).

    flock /tmp/pconv-heavy.lock .venv/bin/python benchmarks/derived_this_machine.py
    .venv/bin/python benchmarks/derived_this_machine.py --calib validation
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_tables import LatencyTable  # noqa: E402
from latency_tables.cost_model import OpArrays, predict_ms, trace  # noqa: E402
from latency_tables.derive import load_profile  # noqa: E402
from latency_tables.measure import Protocol, time_network  # noqa: E402
from latency_tables.profile_fit import FitData, fit_profile  # noqa: E402
from latency_tables.validate import accuracy, sample_archs  # noqa: E402
from search_space import PRESETS, SearchSpace, build_model, fuse  # noqa: E402

REPORTS = Path(__file__).resolve().parent.parent / "latency_tables" / "reports"
VALIDATION = REPORTS / "amd-epyc_validate_n50_seed0.csv"


def calibration_networks() -> dict[str, torch.nn.Module]:
    """Six networks, BN folded: three fused FasterNets and three torchvision CNNs (fx fuse)."""
    import torchvision
    from torch.fx.experimental.optimization import fuse as fx_fuse

    nets: dict[str, torch.nn.Module] = {
        f"FasterNet-{p[-2:].upper()} (fused)": fuse(build_model(PRESETS[p]))
        for p in ("fasternet_t0", "fasternet_t1", "fasternet_t2")}
    for name in ("mobilenet_v2", "resnet18", "shufflenet_v2_x1_0"):
        nets[f"torchvision {name} (BN folded)"] = fx_fuse(getattr(torchvision.models, name)().eval())
    return nets


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", choices=("timed", "validation"), default="timed")
    mode = ap.parse_args().calib
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    table = LatencyTable.load("amd-epyc")
    val = pd.read_csv(VALIDATION)
    corr = table.meta.get("correction") or {}
    archs = sample_archs(SearchSpace.default(), 50, 0, exclude=corr.get("fitted_on", ()))
    by_id = {a.arch_id: a for a in archs if a.arch_id in set(val["arch_id"])}
    val = val[val["arch_id"].isin(by_id)].reset_index(drop=True)
    measured, traces, names = [], [], []
    if mode == "timed":
        proto = Protocol(target="cpu", batch=1, threads=1)
        for name, model in calibration_networks().items():
            ms = min(time_network(model, proto).median_ms for _ in range(2))  # min over 2 rounds
            measured.append(ms)
            traces.append(trace(model, x))
            names.append(name)
            print(f"  {name:42s} {ms:8.2f} ms")
    else:
        pick = np.random.default_rng(0).choice(len(val), 6, replace=False)
        for i in sorted(pick):
            r = val.iloc[i]
            names.append(f"validation arch {r.arch_id}")
            measured.append(float(r.measured_ms))
            traces.append(trace(fuse(build_model(by_id[r.arch_id])), x))
        val = val.drop(index=pick).reset_index(drop=True)
    data = FitData(names, np.ones(len(names), bool), np.array(measured), np.ones(len(names)),
                   OpArrays(traces, 1))
    prior = load_profile("cpu")
    profile = fit_profile("this-cpu", data, start=prior, prior="i9-9900X profile (profiles/cpu.json)")

    loo = []
    for i in range(len(names)):
        keep = [j for j in range(len(names)) if j != i]
        sub = FitData([names[j] for j in keep], np.ones(len(keep), bool), data.measured_ms[keep],
                      np.ones(len(keep)), OpArrays([traces[j] for j in keep], 1))
        loo.append(predict_ms(traces[i], fit_profile("this-cpu", sub, start=prior)))

    val["derived_ms"] = [predict_ms(trace(fuse(build_model(by_id[i])), x), profile)
                         for i in val["arch_id"]]
    val["derived_i9_profile_ms"] = [predict_ms(trace(fuse(build_model(by_id[i])), x), prior)
                                    for i in val["arch_id"]]
    val["derived_error_pct"] = (val["derived_ms"] / val["measured_ms"] - 1) * 100
    stem = "derived_this_machine" + ("" if mode == "timed" else "_valcalib")
    val.to_csv(REPORTS / f"{stem}.csv", index=False, float_format="%.4f")

    m = val["measured_ms"]
    rows = {"measured table, raw sum": accuracy(m, val["raw_ms"]),
            "measured table, corrected": accuracy(m, val["predicted_ms"]),
            "derived: cost model calibrated on 6 networks": accuracy(m, val["derived_ms"]),
            "derived: i9-9900X profile as is (other CPU)": accuracy(m, val["derived_i9_profile_ms"])}
    lines = ["# Derived-table method checked on this machine", "",
             f"CPU: {table.meta.get('device', {}).get('cpu_model')}, 1 thread, batch 1, 224x224. "
             + ("Cost model calibrated from six whole networks measured here (BN folded), "
                if mode == "timed" else
                "Cost model calibrated from six of the validation networks (seeded draw, their "
                "measurements from the validation file, no timing here), ")
             + "starting from the i9-9900X profile; evaluated on the "
             f"{len(val)} (other) validation architectures of the measured table `amd-epyc` "
             f"(`{VALIDATION.name}`, same measurements).", "",
             "| calibration network | measured (ms) | in-fit (ms) | leave-one-out (ms) |",
             "| --- | --- | --- | --- |"]
    for name, ms, tr, lo in zip(names, measured, traces, loo):
        lines.append(f"| {name} | {ms:.2f} | {predict_ms(tr, profile):.2f} | {lo:.2f} |")
    lines += ["", f"| predictor ({len(val)} validation architectures) | MAPE | within ±10 % | Kendall tau "
              "| mean error |", "| --- | --- | --- | --- | --- |"]
    for k, a in rows.items():
        lines.append(f"| {k} | {a.mape_pct:.1f} % | {a.within_10_pct:.0f} % | {a.kendall_tau:.3f} "
                     f"| {a.mean_error_pct:+.1f} % |")
    consts = {k: v for k, v in profile.to_dict().items() if k != "fit"}
    lines += ["", f"Profile fitted here: `{consts}`"]
    (REPORTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
