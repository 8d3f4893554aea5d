"""Compute, then draw: what a reference set says, per protocol.

`summarize(folder)` computes a `Summary` per protocol: the per-architecture K-seed means,
the set's reliability (seed noise, spread between architectures, the seed-vs-seed Kendall
tau that is the noise ceiling of any proxy, the reliability of the K-seed mean; the same
statistics as `proxies.validate.reference_repeatability`), accuracy against predicted
latency, params-only and FLOPs-only Kendall tau as the baselines every proxy must beat
(on every architecture, the tune half and the holdout half separately), where the presets
land, and the cost per run. `write_report` renders ``report.md`` and ``accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..validate import reference_repeatability
from .build import ReferenceSet, members_frame, read_runs

__all__ = ["Summary", "seed_noise", "summarize", "write_report", "NOISE_CEILING_GOAL"]

#: The issue's bar for a set that can rank the space: seed-vs-seed Kendall tau.
NOISE_CEILING_GOAL = 0.8


@dataclasses.dataclass(frozen=True)
class Summary:
    """One protocol of a set, computed from its finished runs."""

    protocol_id: str
    archs: pd.DataFrame
    """One row per architecture: members' columns, ``acc_s<seed>`` per seed, ``mean``, ``std``,
    ``n_seeds``, ``seconds`` (mean per run), ``device``."""
    seeds: tuple[int, ...]
    complete: int
    """Architectures with every seed finished (the statistics use only these)."""
    repeatability: dict[str, Any] | None
    pair_taus: list[float]
    """Kendall tau of every pair of seeds over the architectures with both (the noise ceiling
    is their mean); NaN where fewer than 3 architectures have both."""
    pair_ns: list[int]
    """How many architectures each of `pair_taus` rests on."""
    noise: dict[str, float] | None
    """Seed noise from every architecture with >= 2 seeds so far (`seed_noise`); None
    without any."""
    baselines: pd.DataFrame
    """Kendall tau of params / FLOPs / latency with the K-seed mean: all, tune, holdout."""
    failed: pd.DataFrame
    latency_col: str | None
    curves: pd.DataFrame
    """Mean held-out accuracy over seeds after each epoch: one row per architecture
    (index arch_id), one column per epoch."""

    @property
    def noise_ceiling(self) -> float:
        taus = [t for t in self.pair_taus if not math.isnan(t)]
        return float(np.mean(taus)) if taus else math.nan


def seed_noise(archs: pd.DataFrame, seeds: tuple[int, ...]) -> dict[str, float] | None:
    """Variance components from a set that is not complete yet: the seed noise pooled over
    every architecture with >= 2 seeds, the spread of one seed's accuracy over every
    architecture with it, and what they imply.

    ``icc`` is the share of one run's variance that belongs to the architecture, ICC(1) =
    (var_one_seed - var_noise) / var_one_seed. Under a bivariate normal model Kendall tau is
    (2 / pi) asin(r) (Greiner's relation), so two seeds rank the architectures with an expected
    tau of (2 / pi) asin(ICC) (``ceiling_model``: the noise ceiling as the issue defines it),
    and a predictor that knew every architecture's true mean would reach (2 / pi)
    asin(sqrt(ICC)) against one seed (``perfect_vs_one_seed``). Stds in accuracy points.
    """
    cols = [f"acc_s{s}" for s in seeds if f"acc_s{s}" in archs]
    if len(cols) < 2:
        return None
    points = archs[cols] * 100
    multi = points[points.notna().sum(axis=1) >= 2]
    df = int((multi.notna().sum(axis=1) - 1).sum())
    if df == 0:
        return None
    noise_var = float((multi.sub(multi.mean(axis=1), axis=0) ** 2).sum().sum()) / df
    one = points[max(cols, key=lambda c: points[c].notna().sum())].dropna()
    one_var = float(one.var(ddof=1)) if len(one) >= 3 else math.nan
    icc = max(0.0, (one_var - noise_var) / one_var) if one_var > 0 else math.nan
    return {"noise_std": math.sqrt(noise_var), "noise_df": df, "n_multi": len(multi),
            "one_seed_std": math.sqrt(one_var) if one_var >= 0 else math.nan,
            "n_one_seed": len(one), "icc": icc,
            "ceiling_model": 2 / math.pi * math.asin(icc) if icc == icc else math.nan,
            "perfect_vs_one_seed": (2 / math.pi * math.asin(math.sqrt(icc))
                                    if icc == icc else math.nan)}


def _tau(a: pd.Series, b: pd.Series) -> float:
    ok = pd.concat([a, b], axis=1).dropna()
    return float(stats.kendalltau(ok.iloc[:, 0], ok.iloc[:, 1]).statistic) if len(ok) >= 3 else math.nan


def summarize(folder: Path) -> list[Summary]:
    rset = ReferenceSet.load(folder)
    runs = read_runs(folder)
    members = members_frame(rset)
    lat = next((c for c in members.columns if c.startswith("latency_ms_")), None)
    out = []
    for protocol in rset.protocols:
        pid = protocol.protocol_id
        mine = runs[runs["protocol_id"] == pid] if not runs.empty else runs
        ok = mine[mine["status"] == "ok"] if not mine.empty else mine
        failed = mine[mine["status"] != "ok"] if not mine.empty else mine
        archs = members.copy()
        seeds = tuple(s for s in rset.seeds
                      if not ok.empty and (ok["seed"] == s).any())
        for s in seeds:
            col = ok[ok["seed"] == s].set_index("arch_id")["accuracy"]
            archs[f"acc_s{s}"] = archs["arch_id"].map(col)
        cols = [f"acc_s{s}" for s in seeds]
        archs["n_seeds"] = archs[cols].notna().sum(axis=1) if cols else 0
        archs["mean"] = archs[cols].mean(axis=1) if cols else math.nan
        archs["std"] = archs[cols].std(axis=1, ddof=1) if len(cols) > 1 else math.nan
        if not ok.empty:
            by_arch = ok.groupby("arch_id")["seconds"]
            archs["seconds"] = archs["arch_id"].map(by_arch.mean())
            archs["run_seconds"] = archs["arch_id"].map(by_arch.sum())
            archs["n_runs"] = archs["arch_id"].map(by_arch.count())
            archs["device"] = archs["arch_id"].map(ok.groupby("arch_id")["device"].first())
            if "workers" in ok:
                archs["workers"] = archs["arch_id"].map(ok.groupby("arch_id")["workers"].max())
        full = archs[archs["n_seeds"] == len(seeds)] if seeds else archs.iloc[0:0]
        rep = None
        if len(seeds) >= 2 and len(full) >= 3:
            frame = full.rename(columns={f"acc_s{s}": f"reference_s{s}" for s in seeds})
            rep = dataclasses.asdict(reference_repeatability(frame, seeds))
        pairs = [archs[[f"acc_s{a}", f"acc_s{b}"]].dropna()
                 for a, b in itertools.combinations(seeds, 2)]
        taus = [_tau(p.iloc[:, 0], p.iloc[:, 1]) for p in pairs]
        rows = []
        for name in ("params_m", "flops_g", *([lat] if lat else [])):
            row = {"predictor": name.removesuffix("_m").removesuffix("_g")}
            for split in ("all", "tune", "holdout"):
                part = archs if split == "all" else archs[archs["split"] == split]
                row[split] = _tau(part[name], part["mean"])
                row[f"n_{split}"] = int(part["mean"].notna().sum())
            rows.append(row)
        out.append(Summary(pid, archs, seeds, len(full), rep, taus, [len(p) for p in pairs],
                           seed_noise(archs, seeds), pd.DataFrame(rows), failed, lat,
                           _curves(ok)))
    return out


def _curves(ok: pd.DataFrame) -> pd.DataFrame:
    if ok.empty or "epochs" not in ok:
        return pd.DataFrame()
    points = [(r.arch_id, e["epoch"], e["accuracy"]) for r in ok.itertuples()
              for e in (r.epochs if isinstance(r.epochs, list) else [])]
    if not points:
        return pd.DataFrame()
    frame = pd.DataFrame(points, columns=["arch_id", "epoch", "accuracy"])
    return frame.pivot_table(index="arch_id", columns="epoch", values="accuracy", aggfunc="mean")


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _markdown(folder: Path, rset: ReferenceSet, summaries: list[Summary],
              runs: pd.DataFrame) -> str:
    pilot = bool(rset.design.get("pilot"))
    where = Path(os.path.relpath(folder.resolve(), Path.cwd())) if folder.is_absolute() else folder
    lines = [f"# Reference set: {rset.dataset}" + (" (pilot)" if pilot else ""), "",
             f"`python -m proxies reference report {where}` (rows: `{where}/runs*.jsonl`, "
             f"set: `{where}/set.json`).", ""]
    if not pilot:
        d = rset.design
        n_tune = sum(m.split == "tune" for m in rset.members)
        lines += [f"{d.get('n')} architectures sampled from the default space (seed "
                  f"{d.get('seed')}), {d.get('n', 0) // max(d.get('strata', 1), 1)} per quintile "
                  f"of predicted latency on the `{d.get('latency_table')}` table (edges "
                  f"{', '.join(f'{e:g}' for e in d.get('latency_edges_ms', []))} ms), plus "
                  f"{', '.join([*d.get('presets', []), *d.get('extras', [])])}; split {n_tune} "
                  "tune / "
                  f"{len(rset.members) - n_tune} holdout (seed {d.get('split_seed')}).", ""]
    if not runs.empty:
        held = runs["heldout"].dropna().unique()
        machines = runs["machine"].dropna().unique()
        devices = runs["device"].dropna().unique()
        lines += [f"Accuracy on {', '.join(held)} (the search never reads it). Trained on "
                  f"{', '.join(devices)}; machines: {', '.join(machines)}; torch "
                  f"{', '.join(runs['torch'].dropna().unique())}.", ""]
    for s in summaries:
        lines += _protocol_section(s, rset)
    lines += _protocols_compared(summaries)
    return "\n".join(lines)


def _protocols_compared(summaries: list[Summary]) -> list[str]:
    """Does the protocol (its learning rate, its epochs) change the ranking? Kendall tau of
    the seed-mean accuracies of every pair of protocols, and each one's best architecture."""
    if len(summaries) < 2:
        return []
    lines = ["## Protocols compared", "",
             "| protocol A | protocol B | N | Kendall tau | mean A - B (points) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for a, b in itertools.combinations(summaries, 2):
        ma = a.archs.set_index("arch_id")["mean"]
        mb = b.archs.set_index("arch_id")["mean"]
        both = pd.concat([ma, mb], axis=1, keys=["a", "b"]).dropna()
        diff = (both["a"] - both["b"]).mean() * 100 if len(both) else math.nan
        lines.append(f"| {a.protocol_id} | {b.protocol_id} | {len(both)} | "
                     f"{_fmt(_tau(both['a'], both['b']) if len(both) else math.nan)} | "
                     f"{_fmt(diff, 2)} |")
    return [*lines, ""]


def _protocol_section(s: Summary, rset: ReferenceSet) -> list[str]:
    p = next(p for p in rset.protocols if p.protocol_id == s.protocol_id)
    a = s.archs
    done = int((a["n_seeds"] > 0).sum())
    lines = [f"## Protocol `{s.protocol_id}`", "",
             f"{p.epochs} epochs of the full training split, batch {p.batch_size}, AdamW peak lr "
             f"{p.lr:g} (warm-up {p.warmup:g} of the steps, cosine to zero), weight decay "
             f"{p.weight_decay:g}, label smoothing {p.label_smoothing:g}, "
             f"{'random crop + flip' if p.augment else 'no augmentation'}, {p.resolution} px.",
             "",
             (f"Complete: {s.complete} of {len(a)} architectures with all {len(s.seeds)} seeds "
              f"({', '.join(map(str, s.seeds))}); {done} with at least one; "
              if s.seeds else f"No runs yet (planned: {len(a)} architectures x seeds "
                              f"{', '.join(map(str, rset.seeds))}); ")
             + f"{len(s.failed)} failed run(s) recorded (retried by the next build).", ""]
    if done == 0:
        return lines
    shown = a[a["n_seeds"] > 0].sort_values(s.latency_col or "flops_g")
    seed_cols = [f"acc_s{x}" for x in s.seeds]
    lat_head = f" {s.latency_col.removeprefix('latency_ms_')} ms |" if s.latency_col else ""
    lines += ["| arch | role | split | params M | MFLOPs |" + lat_head
              + "".join(f" seed {x} |" for x in s.seeds) + " mean % | s / run | device |",
              "| --- | --- | --- | ---: | ---: |" + (" ---: |" if s.latency_col else "")
              + " ---: |" * len(s.seeds) + " ---: | ---: | --- |"]
    for r in shown.itertuples():
        d = r._asdict()
        lat = f" {d[s.latency_col]:.1f} |" if s.latency_col else ""
        lines.append(f"| {r.arch_id} | {r.role} | {r.split} | {r.params_m:.2f} | "
                     f"{r.flops_g * 1000:.1f} |{lat}"
                     + "".join(f" {_fmt(d[c] * 100, 2)} |" for c in seed_cols)
                     + f" {_fmt(r.mean * 100, 2)} | {_fmt(d.get('seconds'), 0)} | "
                       f"{d.get('device', '')} |")
    lines.append("")
    lines += _noise_lines(s)
    b = s.baselines
    lines += ["Kendall tau of each cheap predictor with the mean reference accuracy (baselines "
              "a proxy must beat; latency: does accuracy rise with it?):", "",
              "| predictor | all | tune | holdout |", "| --- | ---: | ---: | ---: |"]
    for r in b.itertuples():
        lines.append(f"| {r.predictor} | {_fmt(r.all)} (N={r.n_all}) | {_fmt(r.tune)} "
                     f"(N={r.n_tune}) | {_fmt(r.holdout)} (N={r.n_holdout}) |")
    lines.append("")
    ranked = shown.dropna(subset=["mean"]).sort_values("mean", ascending=False)
    named = [r for r in ranked.itertuples() if r.role != "sampled"]
    if named:
        lines += ["Where the named networks land (rank by mean accuracy among the "
                  f"{len(ranked)} architectures with results): "
                  + "; ".join(f"{r.role} {list(ranked['arch_id']).index(r.arch_id) + 1} "
                              f"({r.mean * 100:.2f} %)" for r in named) + ".", ""]
    lines += _curve_lines(s, shown)
    if "seconds" in a and a["seconds"].notna().any():
        lines += ["Cost of the runs so far, by device (wall time of each run; runs side by "
                  "side: the worker processes of its build, not counting other builds that "
                  "shared the device):", ""]
        for device, d in a.dropna(subset=["seconds"]).groupby("device", sort=True):
            n, total = int(d["n_runs"].sum()), float(d["run_seconds"].sum())
            workers = sorted({int(w) for w in d.get("workers", pd.Series(dtype=float)).dropna()})
            side = (f", {'/'.join(map(str, workers))} runs side by side" if workers else "")
            unit = "core-hours" if str(device).startswith("cpu") else "device-hours"
            lines.append(f"- {device}: {n} runs, {total / n:.0f} s per run on average "
                         f"(architectures' means {d['seconds'].min():.0f}-"
                         f"{d['seconds'].max():.0f} s{side}), {total / 3600:.2f} {unit}.")
        lines.append("")
    return lines


def _noise_lines(s: Summary) -> list[str]:
    """The set's reliability: from the complete architectures (every seed) where there are
    enough, and from every architecture with >= 2 seeds so far (`seed_noise`)."""
    lines: list[str] = []
    rep, noise = s.repeatability, s.noise
    pairs = [f"seeds {a}/{b}: {_fmt(t)} (N={n})" for (a, b), t, n
             in zip(itertools.combinations(s.seeds, 2), s.pair_taus, s.pair_ns) if n]
    if rep:
        lines += ["| measure (the complete architectures) | value |", "| --- | ---: |",
                  f"| seed noise (pooled within-architecture std) | {rep['within_std']:.2f} points |",
                  f"| spread (std over architectures of the {len(s.seeds)}-seed mean) | "
                  f"{rep['between_std']:.2f} points |",
                  f"| reliability of the {len(s.seeds)}-seed mean | {rep['reliability']:.2f} |",
                  ""]
    if noise:
        lines += ["| measure (every architecture with at least 2 seeds so far) | value |",
                  "| --- | ---: |",
                  f"| seed noise (pooled within-architecture std; {noise['n_multi']} "
                  f"architectures, {noise['noise_df']} degrees of freedom) | "
                  f"{noise['noise_std']:.2f} points |",
                  f"| spread of one seed over architectures ({noise['n_one_seed']} architectures)"
                  f" | {noise['one_seed_std']:.2f} points |",
                  f"| ICC(1): share of one run's variance that is the architecture | "
                  f"{_fmt(noise['icc'], 2)} |",
                  f"| noise ceiling, measured: Kendall tau seed vs seed over the architectures "
                  f"with both | {'; '.join(pairs) or '–'} |",
                  f"| noise ceiling, from the variance components: (2/pi) asin(ICC) | "
                  f"{_fmt(noise['ceiling_model'])} |",
                  f"| tau a predictor of the true mean would reach against one seed: (2/pi) "
                  f"asin(sqrt(ICC)) | {_fmt(noise['perfect_vs_one_seed'])} |", "",
                  "The two derived rows assume normal seed noise, equal for every architecture "
                  "(Greiner's relation between Pearson r and Kendall tau); the seed noise rests "
                  f"on {noise['noise_df']} degrees of freedom.", ""]
    ceiling, how = s.noise_ceiling, "measured"
    if math.isnan(ceiling) and noise:
        ceiling, how = noise["ceiling_model"], "from the variance components"
    if not math.isnan(ceiling):
        verdict = "reaches" if ceiling >= NOISE_CEILING_GOAL else "does not reach"
        lines += [f"The noise ceiling ({how}, {ceiling:.3f}) {verdict} the goal of "
                  f"{NOISE_CEILING_GOAL}.", ""]
    return lines


def _curve_lines(s: Summary, shown: pd.DataFrame) -> list[str]:
    """Mean accuracy after each epoch, and how well each epoch ranks the final accuracy
    (Kendall tau over the architectures with every epoch): what a shorter run would say."""
    c = s.curves.dropna()
    if c.empty or c.shape[1] < 2:
        return []
    epochs = list(c.columns)
    if len(epochs) > 10:  # the first three, then evenly spaced to the last
        epochs = sorted(set(epochs[:3] + epochs[3::max(1, len(epochs) // 7)] + epochs[-1:]))
    roles = shown.set_index("arch_id")["role"]
    order = [a for a in shown["arch_id"] if a in c.index]
    final = c[c.columns[-1]]
    lines = ["Mean held-out accuracy (%) after each epoch; last row: Kendall tau of that "
             "epoch's accuracy with the final one over these architectures:", "",
             "| arch | role |" + "".join(f" e{e} |" for e in epochs),
             "| --- | --- |" + " ---: |" * len(epochs)]
    for arch_id in order:
        lines.append(f"| {arch_id} | {roles.get(arch_id, '')} |"
                     + "".join(f" {c.loc[arch_id, e] * 100:.2f} |" for e in epochs))
    lines.append("| tau vs final | |" + "".join(f" {_fmt(_tau(c[e], final), 2)} |" for e in epochs))
    return [*lines, ""]


def write_report(folder: Path) -> list[Path]:
    """``report.md`` and ``accuracy.png`` in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rset = ReferenceSet.load(folder)
    summaries = summarize(folder)
    runs = read_runs(folder)
    fig, axes = plt.subplots(1, len(summaries), figsize=(5.5 * len(summaries), 4.2),
                             squeeze=False)
    for ax, s in zip(axes[0], summaries):
        a = s.archs.dropna(subset=["mean"])
        x = s.latency_col or "flops_g"
        for split, marker in (("tune", "o"), ("holdout", "s"), ("pilot", "D")):
            part = a[a["split"] == split]
            if len(part):
                ax.errorbar(part[x], part["mean"] * 100, yerr=part["std"].fillna(0) * 100,
                            fmt=marker, ms=5, capsize=2, label=split)
        for r in a[a["role"] != "sampled"].itertuples():
            ax.annotate(r.role.replace("fasternet_", ""), (getattr(r, x), r.mean * 100),
                        fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"predicted latency, {x.removeprefix('latency_ms_')} table (ms)"
                      if s.latency_col else "GFLOPs")
        ax.set_ylabel("held-out accuracy (%), mean over seeds")
        ax.set_title(s.protocol_id, fontsize=9)
        if len(a):
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [folder / "report.md", folder / "accuracy.png"]
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    paths[0].write_text(_markdown(folder, rset, summaries, runs)
                        + "\n![accuracy vs latency](accuracy.png)\n")
    return paths
