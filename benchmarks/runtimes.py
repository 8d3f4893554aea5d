"""Latency as deployed: eager PyTorch, ONNX Runtime and ExecuTorch side by side (issue 23).

    python benchmarks/runtimes.py [--n 50] [--budget 6] [--seed 20261206] [--run results/default-arm-budget]

On the machine this runs on, steps stored in `reports/runtimes/steps.json` as they finish
(run again to resume; `--report-only` re-renders, on any machine: the front step keeps each
runtime's latencies of the run's candidates):

1. `table-R` for each runtime R: `python -m latency_tables build --runtime R --budget-minutes
   M` (the CLI's own function: the deployment form chosen by measurement, a space-filling
   sample of the layers timed in R, the rest predicted, calibration networks inside the budget).
2. `networks-R`: N networks sampled from the default space with `--seed` (no build saw them;
   the calibration networks are excluded) and FasterNet-T0, timed whole in R in the form its
   table chose (1 thread, batch 1, 224x224, 2 rounds, min of medians), right after its table,
   interleaved with the table's 10 calibration networks.
3. The report: each runtime's table error on its networks (MAPE, within +-10 %, Kendall tau;
   with the table's stored correction, and with a session correction refitted on the
   calibration networks timed beside them: the build-to-use drift of the machine apart),
   Kendall tau between the runtimes' measured latencies,
   and whether the search's front changes with the runtime: the candidates the run `--run`
   evaluated (their accuracy as the run estimated it) put on each runtime's table; per pair of
   runtimes, front members in common and the hypervolume of one runtime's front measured on
   the other's latencies, as a share of the other's own front's.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from latency_tables import LatencyTable, Protocol, accuracy  # noqa: E402
from latency_tables.__main__ import main as lt_main  # noqa: E402
from latency_tables.validate import calibration_archs  # noqa: E402
from search_space import SearchSpace  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _steps import open_steps, session_predictions, time_interleaved, unseen_archs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("reports") / "runtimes"
RUNTIMES = ("eager", "onnxruntime", "executorch")


def _build(runtime: str, work: Path, budget: float) -> dict:
    name = f"rt-{runtime}"
    for f in work.glob(f"{name}.*"):
        f.unlink()
    t0 = time.monotonic()
    rc = lt_main(["build", "--device", name, "--out", str(work), "--runtime", runtime,
                  "--form", "auto", "--budget-minutes", str(budget)])
    if rc:
        raise SystemExit(f"build {name} failed ({rc})")
    meta = json.loads((work / f"{name}.json").read_text())
    b = meta.get("budget") or {}
    return {"table": str(work / f"{name}.csv"), "wall_s": round(time.monotonic() - t0, 1),
            "form": meta.get("form"), "runtime_version": meta.get("runtime_version"),
            "measured_pct": b.get("measured_pct", 100.0), "cv_error_pct": b.get("error_pct"),
            "form_choice": meta.get("form_choice"), "built_at": meta.get("date")}


def _forms(steps: dict) -> list[str]:
    """The deployment forms each build timed (`deploy.choose_form`, its sidecar's `form_choice`)."""
    choices = {r: steps[f"table-{r}"].get("form_choice") for r in RUNTIMES if f"table-{r}" in steps}
    choices = {r: c for r, c in choices.items() if c}
    if not choices:
        return []
    nets = next(iter(choices.values()))["networks"]
    forms = list(dict.fromkeys(f for c in choices.values() for f in c["forms"]))
    lines = ["", f"### Deployment forms, as each build chose (ms per image of {' / '.join(nets)}; "
             "in bold the chosen; forms within 2 % tie and the first wins)", "",
             "| form | " + " | ".join(choices) + " |", "| --- |" + " --- |" * len(choices)]
    for form in forms:
        cells = []
        for c in choices.values():
            f = c["forms"].get(form)
            if not f:
                cells.append("–")
                continue
            ms = " / ".join(f"{m:.2f}" for m in f["ms"])
            outside = f["outside_delegate"]
            out = f"; outside the delegate: {', '.join(outside)}" if outside else ""
            cells.append((f"**{ms}**" if c["chosen"] == form else ms) + out)
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    return lines


def _networks(table_csv: str, archs: list, seed: int) -> dict:
    table = LatencyTable.load(table_csv)
    calib = calibration_archs(SearchSpace.default())
    timed = time_interleaved(archs, calib, Protocol.from_dict(table.meta["protocol"]),
                             table.resolution, seed)
    return {**timed, "timed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "predicted_ms": [table.predict(a) for a in archs],
            "session_ms": session_predictions(table, archs, calib, timed["calib_ms"]).tolist()}


def _front_latencies(steps: dict, run: Path) -> dict | None:
    """The run's candidates (accuracy as the run estimated it) and each runtime's table's
    latency of them, kept in the step (the tables live in this machine's work folder)."""
    from optimize.cli import open_run_study
    from optimize.report import collect
    from optimize.runner import STUDY_NAME

    tables = {r: LatencyTable.load(steps[f"table-{r}"]["table"]) for r in RUNTIMES
              if f"table-{r}" in steps}
    if len(tables) < 2 or not run.exists():
        return None
    cands = [c for c in collect(open_run_study(run, None, STUDY_NAME)) if c.accuracy is not None]
    return {"run": run.name, "accuracy": [c.accuracy for c in cands],
            "latency_ms": {r: [t.predict(c.arch) for c in cands] for r, t in tables.items()}}


def _front_shift(stored: dict | None) -> list[str]:
    """Fronts per runtime, members in common, hypervolume of one front on another's latencies."""
    from optimize.report import hypervolume, pareto_mask

    if not stored or not stored["accuracy"]:
        return []
    acc = np.array(stored["accuracy"])
    lat = {r: np.array(ms) for r, ms in stored["latency_ms"].items()}
    front = {r: set(np.flatnonzero(pareto_mask(acc, lat[r]))) for r in lat}
    lines = ["", f"### The search's front per runtime ({len(acc)} candidates of `{stored['run']}`, "
             "accuracy as the run estimated it, latency from each runtime's table)", "",
             "| runtime | front members | latency span (ms) |", "| --- | ---: | ---: |"]
    for r in lat:
        f = sorted(front[r])
        lines.append(f"| {r} | {len(f)} | {lat[r][f].min():.1f}-{lat[r][f].max():.1f} |")
    lines += ["", "| A, B | members in common | A's front on B's latencies: hypervolume / B's own |",
              "| --- | ---: | ---: |"]
    for a, b in itertools.permutations(lat, 2):
        ref = float(lat[b].max()) * 1.01
        own = hypervolume(acc[sorted(front[b])], lat[b][sorted(front[b])], ref, float(acc.min()))
        other = hypervolume(acc[sorted(front[a])], lat[b][sorted(front[a])], ref, float(acc.min()))
        common = f"{len(front[a] & front[b])} (fronts of {len(front[a])} and {len(front[b])})"
        lines.append(f"| {a}, {b} | {common} | {other / own if own else float('nan'):.3f} |")
    return lines


def render(steps: dict) -> str:
    dev = steps.get("device", {})
    lines = ["# Latency as deployed: eager, ONNX Runtime, ExecuTorch (`benchmarks/runtimes.py`)", "",
             f"Machine: {dev.get('cpu_model')} ({dev.get('logical_cpus')} logical CPUs, caches "
             f"{dev.get('caches_bytes')}), torch {dev.get('torch')}; {steps.get('date', '')}. "
             "1 thread, batch 1, 224x224. Networks sampled with seed "
             f"{steps.get('seed')} (no build saw them) and FasterNet-T0, timed whole in each "
             "runtime right after its table was built, interleaved with the 10 calibration "
             "networks. Each table is judged with its stored correction (fitted at build time: "
             "what a user gets, the machine's drift since the build included) and with a "
             "session correction refitted on the calibration networks timed beside the judged "
             "ones (the table's own error, as `validate` reports it).", "",
             "| runtime | form (chosen by measurement) | budget | table build | layers measured "
             "| judged after | N "
             "| MAPE, stored | within ±10 %, stored | MAPE, session | within ±10 %, session "
             "| Kendall tau | T0 measured ms | median ms vs eager |",
             "| --- | --- |" + " ---: |" * 12]
    base = steps.get("networks-eager")
    for r in RUNTIMES:
        t, n = steps.get(f"table-{r}"), steps.get(f"networks-{r}")
        if not (t and n):
            continue
        m, p = np.array(n["measured_ms"]), np.array(n["predicted_ms"])
        a = accuracy(m, p)
        sa = accuracy(m, np.array(n["session_ms"])) if "session_ms" in n else None
        session = (f"{sa.mape_pct:.2f} % | {sa.within_10_pct:.0f} %" if sa else "– | –")
        after = "–"
        if n.get("timed_at") and t.get("built_at"):
            built = datetime.datetime.fromisoformat(t["built_at"])
            after = f"{(datetime.datetime.fromisoformat(n['timed_at']) - built).total_seconds() / 60:.0f} min"
        ratio = (f"{np.median(m / np.array(base['measured_ms'])):.2f}x" if base else "–")
        lines.append(f"| {r} {t.get('runtime_version') or ''} | {t['form']} "
                     f"| {t.get('budget_min', '–')} min | {t['wall_s'] / 60:.1f} min "
                     f"| {t['measured_pct']:.0f} % | {after} | {a.n} | {a.mape_pct:.2f} % "
                     f"| {a.within_10_pct:.0f} % | {session} "
                     f"| {a.kendall_tau:.3f} | {m[-1]:.2f} | {ratio} |")
    have = [r for r in RUNTIMES if f"networks-{r}" in steps]
    if len(have) > 1:
        lines += ["", "Kendall tau between the runtimes' measured latencies (same networks): "
                  + "; ".join(f"{a} vs {b} {kendalltau(steps[f'networks-{a}']['measured_ms'], steps[f'networks-{b}']['measured_ms']).statistic:.3f}"  # noqa: E501
                              for a, b in itertools.combinations(have, 2)) + "."]
    lines += _forms(steps)
    lines += _front_shift(steps.get("front"))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--budget", type=float, default=6, help="minutes per runtime's table build")
    p.add_argument("--seed", type=int, default=20261206)
    p.add_argument("--run", default=str(ROOT / "results" / "default-arm-budget"))
    p.add_argument("--runtimes", nargs="*", default=list(RUNTIMES))
    p.add_argument("--work", default=str(Path.home() / ".cache" / "pconv-nas" / "runtimes"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many new steps")
    args = p.parse_args()
    torch.set_num_threads(1)
    out, work, run = Path(args.out), Path(args.work), Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    path = out / "steps.json"
    steps = open_steps(path, not args.report_only, seed=args.seed, n=args.n)

    def save() -> None:
        path.write_text(json.dumps(steps, indent=1) + "\n")
        (out / "report.md").write_text(render(steps))

    for r in RUNTIMES:  # tables built before the step kept their form choice and date
        t = steps.get(f"table-{r}")
        sidecar = Path(t["table"]).with_suffix(".json") if t else None
        if t and not {"form_choice", "built_at"} <= set(t) and sidecar.exists():
            meta = json.loads(sidecar.read_text())
            t.update(form_choice=meta.get("form_choice"), built_at=meta.get("date"))
    if not args.report_only:
        archs = unseen_archs(steps["n"], steps["seed"])
        todo = [(kind, r) for r in args.runtimes for kind in ("table", "networks")
                if f"{kind}-{r}" not in steps]
        for kind, r in todo[:args.max_steps]:
            print(f"== {kind}-{r}", flush=True)
            if kind == "table":
                steps[f"table-{r}"] = {**_build(r, work, args.budget), "budget_min": args.budget}
            else:
                steps[f"networks-{r}"] = _networks(steps[f"table-{r}"]["table"], archs, steps["seed"])
            save()
        steps["front"] = _front_latencies(steps, run) or steps.get("front")
    save()
    print(render(steps))


if __name__ == "__main__":
    main()
