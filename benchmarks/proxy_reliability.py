"""How repeatable are the accuracy estimate's features, and how much of their disagreement with
the ground truth is their own noise? Seeds x budgets over the architectures the estimate may be
designed on.

    python benchmarks/proxy_reliability.py                 # run what is missing, then report
    python benchmarks/proxy_reliability.py --phase report  # report from the stored runs only
    python benchmarks/proxy_reliability.py --budgets quick --seeds 0,1,2 --max-minutes 30

Architectures: the estimate's design rows (`proxies.estimate_fit.design_rows`: the tune half of
the fashion-mnist set and the pilot) plus the front re-check set (`front-default-arm`); never
an architecture of the fashion-mnist set's holdout half (it judges the estimate, so nothing is
designed on it, this benchmark included).

Runs: for every budget (`--budgets`, `;`-separated budget specs) and seed (`--seeds`), the
estimate's features of every architecture (`proxies.estimate.features`, one thread, CPU), with
the checkpoint curve, stored one row per run in ``runs.csv`` (resumable: a stored run is not
repeated; interrupt at any time).

Report (``report.md``), per budget and feature:
- seed-vs-seed Kendall tau over the architectures (the feature's test-retest reliability) and
  ICC(1) (the share of one run's variance that is the architecture);
- Kendall tau with the ground truth (mean over its trained seeds) of one seed's feature and of
  the mean over seeds: what averaging the noise away would buy;
- leave-one-out error of the estimate's ridge family (`proxies.estimate.fit`) on one seed's
  features and on the seed mean, on the estimate's design rows.
Every number names the rows it comes from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from front_check import ground_truth  # noqa: E402
from scipy import stats  # noqa: E402

from optimize.report import markdown_table  # noqa: E402
from proxies import Budget  # noqa: E402
from proxies.estimate import FEATURES, EstimateModel, features  # noqa: E402
from proxies.estimate_fit import design_rows  # noqa: E402
from proxies.reference import ReferenceSet, folder_of  # noqa: E402
from proxies.validate import _machine  # noqa: E402
from search_space import ArchConfig  # noqa: E402
from search_space.flops import params_and_flops  # noqa: E402

OUT = ROOT / "benchmarks" / "reports" / "proxy_reliability"
FRONT_SET = "front-default-arm"
#: The ridge models compared on one seed's features and on the seed mean (the estimate's
#: choice first).
MODELS = (("quick_acc", "log_mflops"), ("quick_acc",), ("quick_val_loss", "log_mflops"),
          ("quick_loss", "log_mflops"), ("naswot", "log_mflops"),
          ("quick_acc", "naswot", "log_mflops"))
#: The features whose noise is measured (the architecture's size features have none).
NOISY = ("quick_acc", "quick_val_loss", "quick_loss", "last_loss", "naswot")


def architectures(dataset: str, with_sets: list[str], front: str | None
                  ) -> tuple[pd.DataFrame, str]:
    """arch_id, arch, source, in_design (the estimate's design rows) for every architecture
    studied here; the dataset set's holdout half is excluded."""
    rows, pid, _ = design_rows(dataset, with_sets=with_sets)
    rows = rows[["arch_id", "arch", "source"]].assign(in_design=True)
    holdout = {m.arch_id for m in ReferenceSet.load(folder_of(dataset)).members
               if m.split == "holdout"}
    if front:
        fset = ReferenceSet.load(folder_of(front))
        extra = pd.DataFrame([{"arch_id": m.arch_id, "arch": m.arch, "source": front,
                               "in_design": False} for m in fset.members
                              if m.arch_id not in holdout
                              and m.arch_id not in set(rows["arch_id"])])
        rows = pd.concat([rows, extra], ignore_index=True)
    return rows.reset_index(drop=True), pid


def _run_one(arch: ArchConfig, dataset: str, spec: str, seed: int) -> dict:
    checkpoints: list[tuple[int, float]] = []

    def keep(step: int, acc: float) -> bool:
        checkpoints.append((step, acc))
        return False

    feats, run = features(arch, dataset=dataset, budget=spec, seed=seed, device="cpu",
                          callback=keep)
    last = run.train_losses[-1][1] if run.train_losses else math.nan
    return {"arch_id": arch.arch_id, "budget": spec, "seed": seed, **feats,
            "last_loss": math.log(last) if last > 0 else math.nan,
            "curve": json.dumps([round(100 * a, 2) for _, a in checkpoints]),
            "seconds": run.seconds, "reason": run.reason if run.failed else ""}


def run_all(archs: pd.DataFrame, dataset: str, budgets: list[str], seeds: list[int],
            out: Path, max_minutes: float | None) -> pd.DataFrame:
    path = out / "runs.csv"
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    have = set() if done.empty else set(zip(done["arch_id"], done["budget"], done["seed"]))
    start = time.monotonic()
    # Budget by budget, seed by seed, cheapest architecture first (by MFLOPs at 32 px): an
    # interrupted run leaves whole seeds of the cheap architectures behind it.
    cost = [params_and_flops(a, resolution=32, num_classes=10, in_chans=1).flops_g
            for a in archs["arch"]]
    order = archs.assign(cost=cost).sort_values("cost")
    for spec, seed in itertools.product(budgets, seeds):
        for a in order.itertuples():
            if (a.arch_id, spec, seed) in have:
                continue
            if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
                print(f"stopping after {max_minutes} min (--max-minutes); rerun to resume")
                return done
            row = _run_one(a.arch, dataset, spec, seed)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            out.mkdir(parents=True, exist_ok=True)
            done.to_csv(path, index=False)
            print(f"{spec} seed {seed} {a.arch_id}: quick_acc {row['quick_acc']:.2f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    return done


def icc1(table: pd.DataFrame) -> float:
    """ICC(1) of a wide table (rows: architectures, columns: seeds), one-way random effects
    over the rows with every seed present."""
    t = table.dropna()
    n, k = t.shape
    if n < 3 or k < 2:
        return math.nan
    grand = t.to_numpy().mean()
    msb = k * ((t.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    msw = ((t.sub(t.mean(axis=1), axis=0)) ** 2).to_numpy().sum() / (n * (k - 1))
    return float((msb - msw) / (msb + (k - 1) * msw))


def _tau(a: pd.Series, b: pd.Series) -> tuple[float, int]:
    ok = a.notna() & b.notna()
    if ok.sum() < 4:
        return math.nan, int(ok.sum())
    return float(stats.kendalltau(a[ok], b[ok]).statistic), int(ok.sum())


def _loo(frame: pd.DataFrame, feats: tuple[str, ...]) -> dict[str, float]:
    """Leave-one-out of the estimate's ridge on `frame` at the alpha of `ALPHAS` with the
    lowest error (the estimate's own `_loo`: standardization refitted without the left-out
    row): RMSE, the standard error of the MSE, Kendall tau, N, alpha."""
    from proxies.estimate import ALPHAS
    from proxies.estimate import _loo as loo

    f = frame.dropna(subset=[*feats, "gt"])
    if len(f) < 5:
        return {"N": len(f)}
    y = f["gt"].to_numpy(float)
    best = None
    x = f[list(feats)].to_numpy(float)
    for alpha in ALPHAS:
        pred = loo(x, y, alpha)
        sq = (pred - y) ** 2
        if best is None or sq.mean() < best[1].mean():
            best = (alpha, sq, pred)
    alpha, sq, pred = best
    return {"N": len(f), "alpha": alpha, "LOO RMSE": float(np.sqrt(sq.mean())),
            "MSE se": float(sq.std(ddof=1) / np.sqrt(len(sq))),
            "LOO tau": float(stats.kendalltau(pred, y).statistic)}


def report(runs: pd.DataFrame, archs: pd.DataFrame, protocol: str, sets: list[str],
           out: Path, command: str, dataset: str) -> Path:
    gt = ground_truth(sets, protocol)
    where = out.resolve()
    where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    info = archs.set_index("arch_id")
    lines = [
        "# How repeatable are the estimate's features?", "",
        f"`{command}` (`benchmarks/proxy_reliability.py`; runs: `{where}/runs.csv`).",
        "",
        f"{len(archs)} architectures: the estimate's design rows ({int(info['in_design'].sum())}: "
        "the fashion-mnist set's tune half and the pilot) and the front re-check set "
        f"`{FRONT_SET}` ({int((~info['in_design']).sum())}); none of the fashion-mnist set's "
        "holdout half. Ground truth: mean accuracy (%) under "
        f"`{protocol}` over the seeds trained ({', '.join(Path(s).name for s in sets)}). "
        f"Features on the CPU, one thread: {_machine()}.", ""]
    runs = runs[runs["reason"].isna() | (runs["reason"] == "")]
    # Design decisions read the design rows only; the front set is reported apart (it is
    # the out-of-fit check of benchmarks/front_check.py).
    summary: dict[str, dict[str, dict[str, float]]] = {}
    scopes = {"design rows": set(info.index[info["in_design"]]),
              "front set": set(info.index[~info["in_design"]])}
    for spec, part in runs.groupby("budget", sort=False):
        seeds = sorted(part["seed"].unique())
        lines += [f"## Budget `{spec}` = {Budget.parse(spec)}", "",
                  f"Seeds {', '.join(map(str, seeds))}; runs per seed: "
                  + ", ".join(f"{s}: {int((part['seed'] == s).sum())}" for s in seeds)
                  + f"; median {part['seconds'].median():.1f} s per run (beside other jobs: a "
                  "cost for comparison within this report, not a benchmark).", ""]
        model = EstimateModel.load(dataset)
        noisy = list(NOISY)
        if Budget.parse(spec) == Budget(**model.budget):  # the committed estimate applies
            part = part.assign(estimate=[model.predict(r)[0] for r in part.to_dict("records")])
            noisy.insert(0, "estimate")
        rows = []
        for feat in noisy:
            wide = part.pivot_table(index="arch_id", columns="seed", values=feat)
            pair = [_tau(wide[a], wide[b]) for a, b in itertools.combinations(wide.columns, 2)]
            pair_txt = "; ".join(f"{a}/{b}: {t:.2f} (N={n})" for (a, b), (t, n) in zip(
                itertools.combinations(wide.columns, 2), pair, strict=True)) or "–"
            noise = wide.std(axis=1, ddof=1).pow(2).mean() ** 0.5 if wide.shape[1] > 1 else math.nan
            mean = wide.mean(axis=1)
            g = gt["gt"].reindex(wide.index)
            s0 = wide[seeds[0]] if seeds[0] in wide else pd.Series(dtype=float)
            row = {"feature": feat, "seed vs seed tau": pair_txt, "ICC(1)": icc1(wide),
                   "seed noise": noise, "spread over archs": float(s0.std())}
            for scope, ids in scopes.items():
                keep = wide.index.isin(ids)
                row[f"tau vs GT, {scope}, seed {seeds[0]}"] = "{:.2f} (N={})".format(
                    *_tau(s0[keep], g[keep]))
                row[f"tau vs GT, {scope}, seed mean"] = "{:.2f} (N={})".format(
                    *_tau(mean[keep], g[keep]))
            rows.append(row)
            pairs = [t for t, _ in pair if t == t]
            summary.setdefault(spec, {})[feat] = {
                "seed_vs_seed_tau": float(np.mean(pairs)) if pairs else math.nan,
                "icc": icc1(wide), "n": int(len(wide.dropna()))}
        lines += [markdown_table(pd.DataFrame(rows).round(3)), "",
                  "`estimate`: the committed accuracy estimate (`proxies/estimates/`) applied to "
                  "each seed's features (where its budget is this one; on the design rows its tau is "
                  "in-sample, it was fitted on their seed-0 features). Seed noise: root mean "
                  "within-architecture variance over seeds (the feature's unit: % for "
                  "quick_acc and the estimate, cross-entropy or log loss for the losses). Tau vs GT over "
                  "the design rows (what the estimate may be designed on) and, apart, over the "
                  "front set (the estimate's out-of-fit check in `benchmarks/front_check.py`).",
                  ""]
        # The estimate's family on one seed vs the seed mean, on its own design rows.
        wide = {f: part.pivot_table(index="arch_id", columns="seed", values=f)
                for f in FEATURES}
        design = info[info["in_design"]].index
        fit_rows = []
        first = seeds[0]
        for label, one in [(f"seed {first}", True),
                           (f"mean of seeds {', '.join(map(str, seeds))}", False)]:
            frame = pd.DataFrame({f: w[first] if one else w.mean(axis=1)
                                  for f, w in wide.items()})
            frame["gt"] = gt["gt"].reindex(frame.index)
            for scope, ids in [("design rows", design), ("design rows + front set",
                                                         frame.index)]:
                f = frame.loc[frame.index.intersection(ids)]
                for feats in MODELS:
                    fit_rows.append({"features from": label, "rows": scope,
                                     "model": " + ".join(feats), **_loo(f, feats)})
        lines += ["Leave-one-out of the estimate's ridge on one seed's features and on their "
                  "mean over seeds (each model at the ridge strength of `estimate.ALPHAS` with "
                  "the lowest error; `MSE se`: the standard error of the mean squared error, "
                  "the one-standard-error rule's yardstick):", "",
                  markdown_table(pd.DataFrame(fit_rows).round(3)), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", default="runs,report", help="runs, report or both")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--with", dest="with_sets", default="pilot")
    p.add_argument("--budgets", default="quick;quick,val_size=5000",
                   help="';'-separated budget specs")
    p.add_argument("--seeds", default="1,0,2")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    budgets = [b.strip() for b in a.budgets.split(";") if b.strip()]
    for b in budgets:
        Budget.parse(b)
    seeds = [int(s) for s in a.seeds.split(",")]
    with_sets = [s for s in a.with_sets.split(",") if s]
    archs, pid = architectures(a.dataset, with_sets, FRONT_SET)
    runs = pd.read_csv(a.out / "runs.csv") if (a.out / "runs.csv").is_file() else pd.DataFrame()
    if "runs" in a.phase:
        runs = run_all(archs, a.dataset, budgets, seeds, a.out, a.max_minutes)
    if "report" in a.phase and not runs.empty:
        sets = [str(folder_of(s)) for s in [FRONT_SET, a.dataset, *with_sets]]
        cmd = "python benchmarks/proxy_reliability.py " + " ".join(argv or sys.argv[1:])
        print(report(runs, archs, pid, sets, a.out, cmd.strip(), a.dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
