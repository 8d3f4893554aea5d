"""Which calibration networks: 10 at random, or 10 spanning the sizes (`validate.calibration_archs`)?

    python benchmarks/calibration_choice.py [--from reports/foreign_table] [--repeats 300]

A table's correction (`ms = scale x layer sum + offset`) is fitted on 10 whole networks. This
re-fits it offline, many times, on networks one `benchmarks/foreign_table.py` run timed in a
single session (its judged networks and its calibration networks: no drift between them):
each repeat draws a pool of 40, picks 10 of it either at random or at evenly spaced ranks by
MACs (the pool's smallest and largest included, as `calibration_archs` does with its pool of
200), fits, and judges the fit on every network not picked. Per table that run built here.

The layer sums are stored in `reports/calibration_choice/steps.json` (the tables live in the
work folder of the machine that built them), so `--report-only` re-renders anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _steps import small_archs, timed_calibration, unseen_archs  # noqa: E402

OUT = Path(__file__).with_name("reports") / "calibration_choice"
POOL, PICK = 40, 10


def collect(source: Path) -> dict:
    """The networks a foreign_table run timed, with every built table's layer sum of each."""
    from latency_tables import LatencyTable
    from latency_tables.validate import network_macs

    steps = json.loads((source / "steps.json").read_text())
    nets = steps["networks"]
    small = small_archs(steps["n_small"], steps["seed"] + 1) if steps.get("n_small") else []
    archs = unseen_archs(steps["n"], steps["seed"]) + small + timed_calibration(nets)
    if [a.arch_id for a in archs[:len(nets["arch_id"])]] != nets["arch_id"]:
        raise SystemExit(f"{source}: its networks are not those of its seeds (another code version?)")
    tables = {k: LatencyTable.load(v["table"]) for k, v in steps.items()
              if k.startswith("build-") and isinstance(v, dict) and "table" in v}
    shown = source.resolve().relative_to(ROOT) if source.resolve().is_relative_to(ROOT) else source
    return {"source": str(shown), "device": steps["device"], "date": steps["date"],
            "seed": steps["seed"], "measured_ms": nets["measured_ms"] + nets["calib_ms"],
            "what": (f"{steps['n']} sampled at random and FasterNet-T0, the {len(small)} smallest "
                     f"of {10 * len(small)}, the {len(nets['calib_ms'])} calibration networks"),
            "macs": [network_macs(a) for a in archs],
            "raw_ms": {k: [t.raw_ms(a) / t.batch for a in archs] for k, t in tables.items()}}


def judge(data: dict, repeats: int, seed: int = 0) -> dict:
    from latency_tables.validate import fit_correction

    ms, macs = np.array(data["measured_ms"]), np.array(data["macs"])
    out = {}
    for key, raw in data["raw_ms"].items():
        raw = np.array(raw)
        rng = np.random.default_rng(seed)
        res: dict[str, list] = {"at random": [], "spanning (calibration_archs)": []}
        for _ in range(repeats):
            pool = rng.choice(len(ms), POOL, replace=False)
            ranked = pool[np.argsort(macs[pool])]
            spaced = ranked[np.round(np.linspace(0, POOL - 1, PICK)).astype(int)]
            picks = {"at random": pool[:PICK], "spanning (calibration_archs)": spaced}
            for how, p in picks.items():
                scale, offset = fit_correction(ms[p], raw[p])
                rest = np.setdiff1d(np.arange(len(ms)), p)
                err = ((scale * raw[rest] + offset) / ms[rest] - 1) * 100
                res[how].append([np.abs(err).mean(), (np.abs(err) <= 10).mean() * 100,
                                 np.abs(err).max(), offset])
        out[key] = {how: np.array(v).mean(axis=0).tolist() + [float(np.array(v)[:, 3].std())]
                    for how, v in res.items()}
    return out


def render(steps: dict) -> str:
    d = steps["data"]
    dev = d["device"]
    lines = ["# Which calibration networks (`benchmarks/calibration_choice.py`)", "",
             f"Machine: {dev['cpu_model']} (caches {dev.get('caches_bytes')}), torch "
             f"{dev.get('torch')}; the {len(d['measured_ms'])} networks `{d['source']}` timed in one "
             f"session on {d['date']} (seed {d['seed']}: {d['what']}), re-fitted {steps['repeats']} "
             "times: a pool "
             f"of {POOL}, {PICK} picked, the correction fitted on them and judged on the rest "
             "(means over the repeats).", "",
             "| table | calibration networks | MAPE | within ±10 % | worst | offset (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key, res in steps["judged"].items():
        for how, (mape, w10, worst, off, off_sd) in res.items():
            lines.append(f"| {key} | {how} | {mape:.2f} % | {w10:.1f} % | {worst:.1f} % | "
                         f"{off:.2f} ± {off_sd:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", default=str(OUT.parent / "foreign_table"))
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "steps.json"
    if args.report_only:
        steps = json.loads(path.read_text())
    else:
        data = collect(Path(args.source))
        steps = {"data": data, "repeats": args.repeats, "judged": judge(data, args.repeats)}
        path.write_text(json.dumps(steps, indent=1) + "\n")
    (out / "report.md").write_text(render(steps))
    print(render(steps))


if __name__ == "__main__":
    main()
