"""A search's front next to the ground truth: each member's predicted accuracy against its
accuracy under the reference protocol, and T0/T1/T2 beside them.

    python benchmarks/front_check.py                       # results/default-arm, arm
    python benchmarks/front_check.py --run RUN --device D --sets SET[,SET...] --out R.md

The ground truth of an architecture is the mean over the seeds trained for it, in every set
named (`--sets`: the front's own re-check set, `proxies/reference/front-default-arm`, built
with `python -m proxies reference build --n 0 --extra ...`; the main set; the pilot), under
the protocol the run's estimate predicts (its `accuracy_source` names it; `--protocol`
overrides). Members without a training are listed without one. Nothing here trains: it
joins the run folder (its study) with the committed rows.

The report says whether the front's claim holds on the ground truth: the estimate marks the
members within its uncertainty of the most accurate as ties; the ground truth either agrees
(their measured accuracies differ by less than the seed noise allows) or not.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from optimize.cli import UsageError, open_run_study  # noqa: E402
from optimize.report import (  # noqa: E402
    accuracy_error,
    collect,
    fronts,
    markdown_table,
    presets_of,
    ties_with_best,
)
from optimize.runner import STUDY_NAME  # noqa: E402
from proxies.reference import load  # noqa: E402

SETS = ("proxies/reference/front-default-arm", "proxies/reference/fashion-mnist",
        "proxies/reference/pilot")


def ground_truth(sets: list[str], protocol: str) -> pd.DataFrame:
    """arch_id -> mean accuracy (%), seeds, and which set, over every set's finished runs of
    `protocol` (a seed trained in two sets counts once: the first set named wins)."""
    rows = []
    for name in sets:
        df = load(ROOT / name)
        df = df[df["protocol_id"] == protocol]
        rows += [{"arch_id": r.arch_id, "seed": int(r.seed), "accuracy": r.accuracy * 100,
                  "set": Path(name).name} for r in df.itertuples()]
    if not rows:
        return pd.DataFrame(columns=["gt", "gt_std", "seeds", "set"])
    runs = pd.DataFrame(rows).drop_duplicates(["arch_id", "seed"])
    g = runs.groupby("arch_id")
    return pd.DataFrame({"gt": g["accuracy"].mean(), "gt_std": g["accuracy"].std(ddof=1),
                         "seeds": g["seed"].count(), "set": g["set"].first()})


def check(run: Path, device: str, sets: list[str], protocol: str | None) -> dict:
    try:
        study = open_run_study(run, None, STUDY_NAME)
    except UsageError as e:
        raise SystemExit(f"error: {e}") from None
    record = study.user_attrs.get("run") or {}
    source = record.get("accuracy_source", "")
    if protocol is None:
        found = re.search(r"predicted (\S+) accuracy", source)
        if not found:
            raise SystemExit(f"error: {run}: its accuracy is not an estimate of a reference "
                             "protocol; give --protocol")
        protocol = found.group(1)
    front = next((f for f in fronts(collect(study), presets_of(study), record.get("sources")
                                    or {device: ""}) if f.device == device), None)
    if front is None:
        raise SystemExit(f"error: {run} has no front on {device!r}")
    ties = ties_with_best(front)
    gt = ground_truth(sets, protocol)
    try:  # the architectures the estimate was fitted on: their prediction is in-sample
        from proxies.estimate import EstimateModel

        fitted = set(EstimateModel.load(record.get("dataset", "fashion-mnist")).fitted_on)
    except (FileNotFoundError, ValueError):
        fitted = set()
    rows = []
    for kind, members in (("front", front.members), ("preset", front.presets)):
        for c in members:
            err = accuracy_error(c)
            g = gt.loc[c.arch_id] if c.arch_id in gt.index else None
            rows.append({
                "name": c.name, "kind": kind, "arch_id": c.arch_id,
                f"{device} ms": round(c.latency_ms[device], 1),
                "predicted %": round(c.accuracy * 100, 2),
                "± 95 %": round(1.96 * err * 100, 2) if err is not None else math.nan,
                "tie": ("tie" if ties.get(c.arch_id) else "") if kind == "front" else "",
                "ground truth %": round(g["gt"], 2) if g is not None else math.nan,
                "seeds": int(g["seeds"]) if g is not None else 0,
                "in fit": "yes" if c.arch_id in fitted else "",
                "set": g["set"] if g is not None else ""})
    table = pd.DataFrame(rows).sort_values(f"{device} ms").reset_index(drop=True)
    return {"run": str(run), "device": device, "protocol": protocol, "table": table,
            "source": source, "sets": sets}


def summary(result: dict) -> list[str]:
    t = result["table"]
    known = t[t["seeds"] > 0]
    lines = []
    for part, what in ((known, "networks trained"),
                       (known[known["in fit"] != "yes"], "of them the estimate was not fitted on")):
        if len(part) >= 2:
            diff = part["predicted %"] - part["ground truth %"]
            lines.append(f"- Predicted minus ground truth over the {len(part)} {what}: mean "
                         f"{diff.mean():+.2f} points, mean absolute {diff.abs().mean():.2f}, "
                         f"largest {diff.abs().max():.2f}.")
    if len(known) >= 3:
        tau = stats.kendalltau(known["predicted %"], known["ground truth %"]).statistic
        lat = stats.kendalltau(known[f"{result['device']} ms"], known["ground truth %"]).statistic
        lines.append(f"- Kendall tau over them: predicted vs ground truth {tau:.2f}; latency vs "
                     f"ground truth {lat:.2f} (does accuracy rise with latency here?).")
    front = known[known["kind"] == "front"]
    ms = f"{result['device']} ms"
    if len(front) >= 2:
        lo = front.loc[front["ground truth %"].idxmin()]
        hi = front.loc[front["ground truth %"].idxmax()]
        lines.append(f"- Front members trained: {len(front)} of "
                     f"{int((t['kind'] == 'front').sum())}, {front[ms].min():g}-"
                     f"{front[ms].max():g} ms; ground truth "
                     f"{lo['ground truth %']:.2f} % ({lo['name']}) to {hi['ground truth %']:.2f} % "
                     f"({hi['name']}).")
    return lines


def render(result: dict) -> str:
    t = result["table"].copy()
    t["ground truth %"] = t["ground truth %"].map(lambda x: "–" if pd.isna(x) else f"{x:.2f}")
    return "\n".join([
        "# The default front against the ground truth", "",
        f"`python benchmarks/front_check.py --run {result['run']} --device {result['device']}`", "",
        f"Run `{result['run']}`; its accuracy: {result['source']}.", "",
        f"Ground truth: protocol `{result['protocol']}` on the Fashion-MNIST test split (10,000 "
        f"images), mean over the seeds trained, from {', '.join(f'`{s}`' for s in result['sets'])}"
        " (the first set that holds a seed wins). `tie`: within the estimate's uncertainty of "
        "the most accurate member, as the run's report marks it. `in fit`: a network the "
        "estimate (as committed now) was fitted on, so its prediction is in-sample.", "",
        markdown_table(t), "", *summary(result), ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(ROOT / "results" / "default-arm"))
    p.add_argument("--device", default="arm")
    p.add_argument("--sets", default=",".join(SETS), help="reference set folders, comma-separated")
    p.add_argument("--protocol", default=None, help="default: the one the run's estimate predicts")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "reports" / "front_check.md"))
    args = p.parse_args()
    run = Path(args.run)
    result = check(run, args.device, [s for s in args.sets.split(",") if s],
                   args.protocol)
    result["run"] = str(run.resolve().relative_to(ROOT)) if run.resolve().is_relative_to(ROOT) \
        else str(run)
    text = render(result)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
