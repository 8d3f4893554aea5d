"""A shipped table on a machine it was not measured on: refused, or calibrated by its probes
(issue 23, goal: never off by more than 15 % without saying so; calibrated, within 15 %).

    python benchmarks/foreign_table.py [--table amd-epyc]

Uses what was measured on this machine already: the probes' verification (`python -m
latency_tables verify TABLE`, cached per table and machine; timed here if not cached) and the
50 unseen networks of `reports/budgeted_build/steps.json` (timed whole with the build
protocol; this script refuses them if that report's machine is not this one). Prints the
table's error on them as it is, and after the calibration `--calibrate-latency` applies (every
prediction times the probes' median ratio). Writes `reports/foreign_table.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from latency_tables import LatencyTable, accuracy  # noqa: E402
from latency_tables._device import describe_device  # noqa: E402
from latency_tables.trust import calibrated, verify  # noqa: E402
from latency_tables.validate import calibration_archs, sample_archs  # noqa: E402
from search_space import PRESETS, SearchSpace  # noqa: E402

REPORTS = Path(__file__).with_name("reports")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default="amd-epyc")
    args = p.parse_args()
    steps = json.loads((REPORTS / "budgeted_build" / "steps.json").read_text())
    here = describe_device("cpu")
    if {k: here[k] for k in ("cpu_model", "caches_bytes")} != {
            k: steps["device"][k] for k in ("cpu_model", "caches_bytes")}:
        raise SystemExit("reports/budgeted_build was measured on another machine; run "
                         "benchmarks/budgeted_build.py here first")
    table = LatencyTable.load(args.table)
    v = verify(table)
    cal = calibrated(table, v)
    nets = steps["networks"]
    space = SearchSpace.default()
    calib = {a.arch_id for a in calibration_archs(space)}
    by_id = {a.arch_id: a for a in sample_archs(space, len(nets["arch_id"]), nets["seed"], exclude=calib)}
    by_id[PRESETS["fasternet_t0"].arch_id] = PRESETS["fasternet_t0"]
    archs = [by_id[i] for i in nets["arch_id"]]
    m = np.array(nets["measured_ms"])
    rows = {"as shipped": accuracy(m, [table.predict(a) for a in archs]),
            f"calibrated by its probes (x{v.ratio:.2f})": accuracy(m, [cal.predict(a) for a in archs])}
    lines = [f"# A foreign table here: `{args.table}` (`benchmarks/foreign_table.py`)", "",
             f"This machine: {here['cpu_model']}, caches {here['caches_bytes']}; the table: "
             f"{table.describe()}.", "", f"Verification: {v.summary()}.", "",
             f"{len(m)} unseen networks timed whole here ({steps['date']}, "
             "`benchmarks/reports/budgeted_build/steps.json`, seed "
             f"{nets['seed']}, and FasterNet-T0):", "",
             "| predictions | N | MAPE | within ±10 % | within ±15 % | worst | mean error | Kendall tau |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, a in rows.items():
        pred = np.array([(cal if name != "as shipped" else table).predict(x) for x in archs])
        err = (pred / m - 1) * 100
        lines.append(f"| {name} | {a.n} | {a.mape_pct:.1f} % | {a.within_10_pct:.0f} % | "
                     f"{(np.abs(err) <= 15).mean() * 100:.0f} % | {err[np.abs(err).argmax()]:+.1f} % | "
                     f"{a.mean_error_pct:+.1f} % | {a.kendall_tau:.3f} |")
    text = "\n".join(lines) + "\n"
    (REPORTS / "foreign_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
