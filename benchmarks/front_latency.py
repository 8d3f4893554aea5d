"""A search's front, timed here: does a search favour the networks its table predicts too fast?

    python benchmarks/front_latency.py [--table amd-epyc] [--seeds 1 2 3] [--trials 30]

On a machine where the shipped table does not hold, the user's path end to end: `search.py
--device TABLE --calibrate-latency` (the first search measures this machine's table in a
1-minute build, the next ones find it), once per `--seed`, each with `--trials` trials of the
quick proxy. The search itself times its front's members and presets whole at the end
(`optimize.measured`); this script then times every architecture the search evaluated the
same way (the table's protocol: `trust.time_probes`, 2 rounds, min of medians), after the
search, on a quiet machine, and compares the table's prediction with it, front members
apart from the others. A search minimizes the prediction, so where the table errs a front
holds more of the networks it predicts too fast than a random sample would.

Steps in `reports/front_latency/steps.json` (one per seed; run again to resume,
`--report-only` re-renders; a report is of one machine). The tables and verification cache
live in `--work`, apart from the user's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _steps import open_steps, session_predictions, time_interleaved  # noqa: E402

OUT = Path(__file__).with_name("reports") / "front_latency"


def _search(table: str, seed: int, trials: int, work: Path) -> dict:
    """One search end to end; every evaluated architecture then timed here."""
    import search
    from latency_tables import LatencyTable
    from latency_tables.trust import time_probes
    from optimize.cli import open_run_study
    from optimize.measured import MEASURED_HERE
    from optimize.report import collect, fronts, presets_of
    from optimize.runner import STUDY_NAME

    run = work / f"run-{seed}"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    t0 = time.monotonic()
    rc = search.main(["--device", table, "--calibrate-latency", "--trials", str(trials),
                      "--seed", str(seed), "--timeout", "0", "--run-dir", str(run)])
    if rc:
        raise SystemExit(f"search seed {seed} failed ({rc})")
    wall = time.monotonic() - t0
    study = open_run_study(run, None, STUDY_NAME)
    info = study.user_attrs["run"]
    (front,) = fronts(collect(study), presets_of(study), info["sources"])
    tname = info["tables"][table]["name"]
    tbl = LatencyTable.load(tname)
    done = {c.arch_id: c for c in collect(study) if c.state == "complete" and c.arch}
    archs = [c.arch for c in done.values()]
    measured = time_probes(archs, tbl)
    printed = (study.user_attrs.get(MEASURED_HERE) or {}).get(table, {}).get("ms", {})
    members = {c.arch_id for c in front.members}
    return {"seed": seed, "search_s": round(wall, 1), "table": tname,
            "source": info["sources"][table], "arch_id": list(done),
            "predicted_ms": [c.latency_ms[table] for c in done.values()],
            "measured_ms": [round(m, 4) for m in measured],
            "member": [i in members for i in done],
            "printed_here_ms": {i: printed[i] for i in members if i in printed}}


def _after(steps: dict, work: Path) -> dict:
    """Every run's candidates timed again, interleaved with the table's calibration networks
    (`_steps.time_interleaved`): each candidate's error with the stored correction and with a
    session correction refitted on the calibration networks timed beside it, i.e. apart from
    how far the machine's speed has moved since the build."""

    from latency_tables import LatencyTable, Protocol
    from latency_tables.validate import calibration_archs
    from optimize.cli import open_run_study
    from optimize.report import collect
    from optimize.runner import STUDY_NAME
    from search_space import SearchSpace

    runs = [steps[k] for k in sorted(steps) if k.startswith("seed-")]
    table = LatencyTable.load(runs[0]["table"])
    archs, member = [], []
    for r in runs:
        study = open_run_study(work / f"run-{r['seed']}", None, STUDY_NAME)
        arch = {c.arch_id: c.arch for c in collect(study) if c.arch}
        archs += [arch[i] for i in r["arch_id"]]
        member += r["member"]
    calib = calibration_archs(SearchSpace.default())
    timed = time_interleaved(archs, calib, Protocol.from_dict(table.meta["protocol"]),
                             table.resolution, 0)
    return {**timed, "member": member, "stored_ms": [table.predict(a) for a in archs],
            "session_ms": session_predictions(table, archs, calib, timed["calib_ms"]).tolist(),
            "calib_stored_ms": [table.predict(a) for a in calib]}


def _stats(err: np.ndarray) -> str:
    if not len(err):
        return "– | – | – | – | – | –"
    return (f"{len(err)} | {err.mean():+.1f} % | {np.abs(err).mean():.1f} % | "
            f"{(np.abs(err) <= 10).mean() * 100:.0f} % | {(np.abs(err) <= 15).mean() * 100:.0f} % | "
            f"{err[np.abs(err).argmax()]:+.1f} %")


def render(steps: dict) -> str:
    dev = steps["device"]
    runs = [steps[k] for k in sorted(steps) if k.startswith("seed-")]
    lines = ["# A search's front, timed here (`benchmarks/front_latency.py`)", "",
             f"Machine: {dev['cpu_model']} ({dev.get('logical_cpus')} logical CPUs, caches "
             f"{dev.get('caches_bytes')}), torch {dev.get('torch')}; {steps['date']}. "
             f"`search.py --device {steps['table']} --calibrate-latency --trials "
             f"{steps['trials']} --seed S`, then every architecture it evaluated timed whole "
             "here with the table's protocol, right after it (in the same process, the machine "
             "just out of the search's training). Error: the table's prediction against that "
             "time (negative: predicted too fast).", ""]
    if not runs:
        return "\n".join(lines) + "\n"
    lines += [f"Table: {runs[0]['source']}", "",
              "| seed | who | N | mean error | MAPE | within ±10 % | within ±15 % | worst |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    pooled: dict[str, list[float]] = {"front members": [], "the other candidates": []}
    for r in runs:
        err = (np.array(r["predicted_ms"]) / np.array(r["measured_ms"]) - 1) * 100
        member = np.array(r["member"], bool)
        for who, mask in (("front members", member), ("the other candidates", ~member)):
            lines.append(f"| {r['seed']} | {who} | {_stats(err[mask])} |")
            pooled[who] += err[mask].tolist()
    for who, e in pooled.items():
        lines.append(f"| all | {who} | {_stats(np.array(e))} |")
    lines.append(f"| all | every candidate | {_stats(np.array(sum(pooled.values(), [])))} |")
    after = steps.get("after")
    if after:
        m = np.array(after["measured_ms"])
        cal = (np.array(after["calib_stored_ms"]) / np.array(after["calib_ms"]) - 1) * 100
        member = np.array(after["member"], bool)
        lines += ["", f"The same {len(m)} candidates timed again after all the searches, interleaved "
                  f"with the table's {len(cal)} calibration networks ({after['seconds']:.0f} s): the "
                  f"stored correction predicts those {cal.mean():+.1f} % (mean; {cal.min():+.1f} to "
                  f"{cal.max():+.1f} %), where their fit at build put them at about 0; the session "
                  "correction, refitted on them, judges the candidates apart from how far the "
                  "machine has moved since:", "",
                  "| correction | who | N | mean error | MAPE | within ±10 % | within ±15 % | worst |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for corr in ("stored", "session"):
            err = (np.array(after[f"{corr}_ms"]) / m - 1) * 100
            for who, mask in (("front members", member), ("the other candidates", ~member)):
                lines.append(f"| {corr} | {who} | {_stats(err[mask])} |")
    agree = []
    for r in runs:  # what the search printed against this script's timing of the same networks
        m = dict(zip(r["arch_id"], r["measured_ms"]))
        agree += [v / m[i] - 1 for i, v in r["printed_here_ms"].items() if i in m]
    if agree:
        a = np.abs(np.array(agree)) * 100
        lines += ["", f"The search's own timing of its front (printed beside each prediction) and "
                  f"this script's, minutes apart: {len(a)} networks, median difference "
                  f"{np.median(a):.1f} %, largest {a.max():.1f} %."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default="amd-epyc")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--work", default=str(Path.home() / ".cache" / "pconv-nas" / "front_latency"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PCONV_NAS_TABLES"] = str(work / "tables")  # apart from the user's
    os.environ["PCONV_NAS_VERIFY_CACHE"] = str(work / "verify")
    path = out / "steps.json"
    steps = open_steps(path, not args.report_only, table=args.table, trials=args.trials)

    def save() -> None:
        path.write_text(json.dumps(steps, indent=1) + "\n")
        (out / "report.md").write_text(render(steps))

    if not args.report_only:
        for seed in args.seeds:
            if f"seed-{seed}" not in steps:
                print(f"== seed {seed}", flush=True)
                steps[f"seed-{seed}"] = _search(args.table, seed, steps["trials"], work)
                save()
        if "after" not in steps and any(k.startswith("seed-") for k in steps):
            steps["after"] = _after(steps, work)
            save()
    save()
    print(render(steps))


if __name__ == "__main__":
    main()
