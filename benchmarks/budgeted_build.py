"""Budgeted latency tables against the exhaustive one, on the machine this runs on (issue 24).

    python benchmarks/budgeted_build.py [--budgets 2 4 6 8] [--wide-budget 6] [--n 50] [--seed 20261205]

Steps, each stored in `reports/budgeted_build/steps.json` as it finishes (run it again to
resume; `--report-only` re-renders the report):

1. `networks`: N networks sampled from the default space with `--seed` (never used by a
   build: builds draw their calibration networks with seed 1000 and are excluded here), and
   FasterNet-T0, measured whole with the build protocol (1 thread, batch 1, 224x224, thread
   clock, 2 rounds, min of medians), interleaved with the 10 calibration networks: each table
   is judged with a session correction refitted on those (as `validate` does), so the
   machine's drift between a build and the judging is not counted as the table's error; the
   stored correction's error is reported beside it.
2. `budget-M`: `python -m latency_tables build --budget-minutes M` from scratch (the CLI's own
   function: calibration networks inside the budget); wall time, share measured, and the
   table's prediction of the N networks: MAPE, share within +-10 %, Kendall tau, split into
   networks whose predicted time comes mostly (>= 50 %) from measured rows and the others.
3. `exhaustive`: the default build (every layer, 2 sweeps, then 10 calibration networks).
4. `wide-M`: the same budgeted build on `search_space/wide.yaml` (9x the signatures), judged
   on N networks of that space measured whole.

The Raspberry Pi estimate: for each budgeted build that kept its measured rows (one that did
not measure every layer), each measured layer's time as it would be
on a device `slowdown` times slower (T0 on `arm`, the derived Cortex-A72 table, over T0
measured here): warm-up and timed passes scale, the repeats follow the protocol's minimum
time, and everything else (building the layers, the calibration networks) is scaled too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from latency_tables import LatencyTable, Protocol, accuracy  # noqa: E402
from latency_tables.__main__ import main as lt_main  # noqa: E402
from latency_tables._device import last_level_cache_bytes  # noqa: E402
from latency_tables.validate import calibration_archs, fit_correction  # noqa: E402
from search_space import PRESETS, SearchSpace  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _steps import open_steps, time_interleaved, timed_calibration, unseen_archs  # noqa: E402

OUT = Path(__file__).with_name("reports") / "budgeted_build"
WIDE = Path(__file__).resolve().parents[1] / "search_space" / "wide.yaml"


def _proto() -> Protocol:
    return Protocol(context_bytes=last_level_cache_bytes())  # what `build` uses on a CPU


def _sample(space: SearchSpace, n: int, seed: int) -> list:
    return unseen_archs(n, seed, space, with_t0=False)


def _networks(space: SearchSpace, n: int, seed: int, with_t0: bool) -> dict:
    """The judged networks and the calibration networks, measured interleaved in one session
    (`_steps.time_interleaved`, as `validate` does)."""
    return time_interleaved(unseen_archs(n, seed, space, with_t0), calibration_archs(space),
                            _proto(), 224, seed)


def _build(name: str, work: Path, budget: float, space: Path | None) -> dict:
    args = ["build", "--device", name, "--out", str(work)]
    if budget:
        args += ["--budget-minutes", str(budget)]
    if space:
        args += ["--space", str(space)]
    t0 = time.monotonic()
    rc = lt_main(args)
    if rc:
        raise SystemExit(f"build {name} failed ({rc})")
    return {"wall_s": round(time.monotonic() - t0, 1), "table": str(work / f"{name}.csv")}


def _judge(table_csv: str, space: SearchSpace, nets: dict) -> dict:
    """The table's error on the judged networks: with its stored correction (fitted at build
    time) and with a session correction fitted on the calibration networks measured beside
    the judged ones (`validate`'s two figures); split by the share of measured rows."""
    table = LatencyTable.load(table_csv)
    by_id = {a.arch_id: a for a in _sample(space, len(nets["arch_id"]), nets["seed"])}
    ids = [i for i in nets["arch_id"] if i in by_id]
    measured = dict(zip(nets["arch_id"], nets["measured_ms"]))
    m = np.array([measured[i] for i in ids]) / table.batch
    raw = np.array([table.raw_ms(by_id[i]) for i in ids])
    stored = np.array([table.predict(by_id[i]) for i in ids])
    scale, offset = fit_correction(nets["calib_ms"], [table.raw_ms(a) for a in timed_calibration(nets)])
    session = (scale * raw + offset) / table.batch
    share = np.array([table.measured_share(by_id[i]) for i in ids])
    out = {"all": accuracy(m, session).__dict__, "stored": accuracy(m, stored).__dict__,
           "session_correction": [scale, offset],
           "measured_share_mean_pct": round(float(share.mean() * 100), 1),
           "errors_pct": [round(float(e), 2) for e in (session / m - 1) * 100],
           "stored_errors_pct": [round(float(e), 2) for e in (stored / m - 1) * 100]}
    for label, mask in (("mostly_measured", share >= 0.5), ("mostly_predicted", share < 0.5)):
        out[label] = accuracy(m[mask], session[mask]).__dict__ if mask.sum() >= 2 else {"n": int(mask.sum())}
    b = table.meta.get("budget") or {}
    out.update(measured_pct=b.get("measured_pct", 100.0), layers=len(table.rows),
               repeated=b.get("repeated"),
               cv_error_pct=b.get("error_pct"), models={k: v["form"] for k, v in b.get("models", {}).items()},
               correction=table.meta.get("correction", {}).get("scale"))
    return out


def _row_check(table_csv: str, n: int = 60, seed: int = 0) -> dict:
    """The regressors' error on rows they predicted: `n` predicted rows (seeded) measured now
    with the build protocol (one sweep), against the table's uncorrected `ms`."""
    from latency_tables.build import _measure
    from latency_tables.layers import LayerSig

    df = pd.read_csv(table_csv, keep_default_na=False)
    if "measured" not in df:
        return {}
    pred = df[df["measured"] == 0]
    if pred.empty:
        return {}
    pick = pred.sample(min(n, len(pred)), random_state=seed)
    proto = _proto()
    ms = [_measure(LayerSig.from_row(r), proto).median_ms for r in pick.to_dict("records")]
    err = (pick["ms"].to_numpy() / np.array(ms) - 1) * 100
    kinds = pick["kind"].to_numpy()
    return {"n": len(pick), "mape_pct": float(np.abs(err).mean()), "mean_error_pct": float(err.mean()),
            "by_kind": {k: [int((kinds == k).sum()), float(np.abs(err[kinds == k]).mean())]
                        for k in sorted(set(kinds))},
            "rows": [[k, float(p), float(m)] for k, p, m in zip(pick["key"], pick["ms"], ms)]}


def _pi_minutes(work: Path, name: str, wall_s: float, slowdown: float, proto: Protocol) -> float:
    rows = pd.read_csv(work / f"{name}.partial.csv")
    layers = 0.0
    for r in rows.itertuples():
        here = (proto.warmup + r.repeats) * r.median_ms * r.copies / 1e3
        setup = max(r.seconds - here, 0.0)
        pass_s = slowdown * r.median_ms * r.copies / 1e3
        reps = min(proto.max_repeats, max(proto.min_repeats, math.ceil(proto.min_time_s / pass_s)))
        layers += slowdown * setup + (proto.warmup + reps) * pass_s
    rest = max(wall_s - rows["seconds"].sum(), 0.0)  # calibration networks, fitting
    return (layers + slowdown * rest) / 60


def _fmt(a: dict) -> str:
    if "mape_pct" not in a:
        return f"{a['n']} | – | – | –"
    return f"{a['n']} | {a['mape_pct']:.2f} % | {a['within_10_pct']:.0f} % | {a['kendall_tau']:.3f}"


def render(steps: dict) -> str:
    dev = steps.get("device", {})
    lines = ["# Budgeted latency tables (`benchmarks/budgeted_build.py`)", "",
             f"Machine: {dev.get('cpu_model')} ({dev.get('logical_cpus')} logical CPUs, caches "
             f"{dev.get('caches_bytes')}), torch {dev.get('torch')}; {steps.get('date', '')}. "
             "1 thread, batch 1, 224x224. The networks judged were sampled with seed "
             f"{steps.get('seed')} (no build saw them; the builds' calibration networks, seed 1000, "
             "are excluded) and measured whole with the build protocol, interleaved with the 10 "
             "calibration networks. As `python -m latency_tables validate` does, the error is "
             "judged with a session correction (scale and offset refitted on those calibration "
             "networks, measured beside the judged ones, so that the machine's drift between the "
             "build and the judging is not counted as the table's error); the stored correction's "
             "MAPE and mean signed error (fitted at build time) are the last column but one. The "
             "last column checks the regressors directly: 60 layers a budgeted table predicted "
             "(seeded), measured after its build, against the predicted layer time.", "",
             "| table | space | wall | layers measured | regressors' CV error | N | MAPE | within ±10 % "
             "| Kendall tau | mostly measured: N / MAPE | mostly predicted: N / MAPE "
             "| stored correction: MAPE / mean error | predicted rows measured: N / MAPE / mean error |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    def order(key: str) -> tuple[int, float]:
        kind, _, minutes = key.partition("-")
        return ({"exhaustive": 0, "budget": 1, "wide": 2}.get(kind, 3), float(minutes or 0))

    judged = {k: s for k, s in steps.items() if isinstance(s, dict) and "judge" in s}
    for key, s in sorted(judged.items(), key=lambda kv: order(kv[0])):
        j = s["judge"]
        twice = f" ({j['repeated']} twice)" if j.get("repeated") else ""
        mm, mp = j["mostly_measured"], j["mostly_predicted"]
        cv = f"{j['cv_error_pct']:.1f} %" if j.get("cv_error_pct") is not None else "–"
        lines.append(f"| {key} | {s['space']} | {s['wall_s'] / 60:.1f} min | {j['measured_pct']:.0f} % "
                     f"of {j['layers']}{twice} | {cv} | {_fmt(j['all'])} | "
                     f"{mm['n']} / {mm.get('mape_pct', float('nan')):.2f} % | "
                     f"{mp['n']} / {mp.get('mape_pct', float('nan')):.2f} % | "
                     f"{j['stored']['mape_pct']:.2f} % / {j['stored']['mean_error_pct']:+.1f} % | "
                     + (f"{r['n']} / {r['mape_pct']:.1f} % / {r['mean_error_pct']:+.1f} % |"
                        if (r := s.get("rows")) else "– |"))
    if steps.get("pi", {}).get("minutes"):
        p = steps["pi"]
        builds = ", ".join(f"{k}: {m:.0f} min" for k, m in p["minutes"].items())
        lines += ["", f"Raspberry Pi 4 estimate of the budgeted builds ({builds}) "
                  f"(slowdown {p['slowdown']:.1f}x = FasterNet-T0 on the derived `arm` table, "
                  f"{p['arm_t0_ms']:.0f} ms, over T0 measured here, {p['t0_here_ms']:.1f} ms; each "
                  "measured layer's passes scaled by it, repeats re-derived from the protocol's minimum "
                  "time, setup and calibration scaled too). An estimate, not a Pi measurement."]
    lines += ["", "Regressor forms chosen by cross-validation: " + "; ".join(
        f"{k}: {', '.join(f'{a} {b}' for a, b in s['judge']['models'].items())}"
        for k, s in steps.items() if isinstance(s, dict) and s.get("judge", {}).get("models"))]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="*", default=[6, 2, 4, 8])
    p.add_argument("--wide-budget", type=float, default=6)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--seed", type=int, default=20261205)
    p.add_argument("--work", default=str(Path.home() / ".cache" / "pconv-nas" / "budgeted_build"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=str(OUT), help="report folder")
    p.add_argument("--no-exhaustive", action="store_true", help="skip the exhaustive build")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many new steps (run again to go on; e.g. one step per "
                        "`flock` on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = out / "steps.json"
    steps = open_steps(path, not args.report_only, seed=args.seed)

    def save() -> None:
        path.write_text(json.dumps(steps, indent=1) + "\n")
        (out / "report.md").write_text(render(steps))

    if args.report_only:
        _pi(steps, work)
        return save()
    default, wide = SearchSpace.default(), SearchSpace.from_file(WIDE)
    plan = ([("networks", None)] + [(f"budget-{b:g}", b) for b in args.budgets[:1]]
            + [("exhaustive", 0)] * (not args.no_exhaustive)
            + [(f"budget-{b:g}", b) for b in args.budgets[1:]]
            + ([("wide-networks", None), (f"wide-{args.wide_budget:g}", args.wide_budget)]
               if args.wide_budget else []))
    todo = [(key, budget) for key, budget in plan if key not in steps]
    for key, budget in todo[:args.max_steps]:
        print(f"== {key}", flush=True)
        if key.endswith("networks"):
            space = wide if key.startswith("wide") else default
            steps[key] = {**_networks(space, args.n, args.seed, with_t0=key == "networks"),
                          "seed": args.seed}
        else:
            is_wide = key.startswith("wide")
            space, nets = (wide, steps["wide-networks"]) if is_wide else (default, steps["networks"])
            name = f"bb-{key}"
            for f in work.glob(f"{name}.*"):
                f.unlink()
            built = _build(name, work, budget, WIDE if is_wide else None)
            steps[key] = {**built, "space": "wide" if is_wide else "default",
                          "judge": _judge(built["table"], space, nets),
                          "rows": _row_check(built["table"], seed=args.seed)}
        save()
        print(render(steps), flush=True)
    if len(todo) > (args.max_steps or len(todo)):
        return print(f"{len(todo) - args.max_steps} step(s) left: run the same command again")
    _pi(steps, work)
    save()


def _pi(steps: dict, work: Path) -> None:
    """The Pi estimate of each budgeted default-space build that kept its measured rows."""
    if "networks" not in steps:
        return
    t0_here = steps["networks"]["measured_ms"][-1]
    arm_t0 = LatencyTable.load("arm").predict(PRESETS["fasternet_t0"])
    slow = arm_t0 / t0_here
    steps["pi"] = {"slowdown": slow, "arm_t0_ms": arm_t0, "t0_here_ms": t0_here, "minutes": {}}
    for key, s in steps.items():
        partial = work / f"bb-{key}.partial.csv"
        if key.startswith("budget-") and partial.exists():
            steps["pi"]["minutes"][key] = _pi_minutes(work, f"bb-{key}", s["wall_s"], slow, _proto())


if __name__ == "__main__":
    main()
