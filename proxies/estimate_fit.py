"""Fit the accuracy estimate (`proxies.estimate`) on the tune half of a reference set.

`python -m proxies estimate fit [--dataset fashion-mnist] [--with pilot]`:

1. Design rows: every architecture of the set's *tune* half with at least `min_seeds` runs of
   the protocol, plus the architectures of the `--with` sets (e.g. the pilot, same protocol)
   that are not in the set's holdout half. The holdout half is never read here.
2. Features of each design architecture (`proxies.estimate.features`), cached in
   ``estimates/<dataset>-features.csv`` (one row per architecture, budget and seed), so a
   refit after new reference rows only computes the new architectures.
3. `proxies.estimate.fit`, then ``estimates/<dataset>.json`` (the model) and
   ``estimates/<dataset>.md`` (the candidates' leave-one-out errors and the design rows).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search_space import ArchConfig

from .base import Budget
from .estimate import FEATURES, EstimateModel, features, fit, model_path
from .validate import _machine, _run

__all__ = ["design_rows", "fit_estimate"]


def design_rows(dataset: str, *, protocol: str | None = None, with_sets: Sequence[str] = (),
                min_seeds: int = 1) -> tuple[pd.DataFrame, str, str]:
    """(rows: arch_id, arch, reference (%), n_seeds, source; protocol id; description)."""
    from .reference import ReferenceSet, folder_of
    from .reference.report import summarize

    folder = folder_of(dataset)
    rset = ReferenceSet.load(folder)
    pid = protocol or rset.protocols[0].protocol_id
    summaries = {s.protocol_id: s for s in summarize(folder)}
    if pid not in summaries:
        raise ValueError(f"protocol {pid!r} is not in {folder}; it has {', '.join(summaries)}")
    holdout = {m.arch_id for m in rset.members if m.split == "holdout"}
    archs = {m.arch_id: m.arch for m in rset.members}
    main = summaries[pid].archs
    main = main[(main["split"] == "tune") & (main["n_seeds"] >= min_seeds)]
    frames = [main.assign(source=f"{folder.name} tune")]
    parts = [f"{len(main)} of the {folder.name} set's tune half"]
    for name in with_sets:
        other = folder_of(name)
        extra = {s.protocol_id: s for s in summarize(other)}
        if pid not in extra:
            raise ValueError(f"--with {name}: {other} has no runs of protocol {pid}")
        oset = ReferenceSet.load(other)
        archs.update({m.arch_id: m.arch for m in oset.members})
        rows = extra[pid].archs
        rows = rows[(rows["n_seeds"] >= min_seeds) & ~rows["arch_id"].isin(holdout)
                    & ~rows["arch_id"].isin(pd.concat(frames)["arch_id"])]
        frames.append(rows.assign(source=f"{other.name}"))
        parts.append(f"{len(rows)} of the {other.name} set (none of the holdout half)")
    out = pd.concat(frames, ignore_index=True)
    out = pd.DataFrame({"arch_id": out["arch_id"], "reference": 100 * out["mean"],
                        "n_seeds": out["n_seeds"], "source": out["source"]})
    out["arch"] = out["arch_id"].map(lambda a: archs[a])
    return out, pid, "; ".join(parts)


def seed_noise_of(dataset: str, protocol: str) -> float:
    """The reference set's seed noise (std of one run, points) under `protocol`, pooled over
    its architectures with >= 2 seeds (`proxies.reference.report.seed_noise`); 0 if none."""
    from .reference import folder_of
    from .reference.report import summarize

    summary = next((s for s in summarize(folder_of(dataset)) if s.protocol_id == protocol), None)
    noise = summary.noise if summary is not None else None
    return float(noise["noise_std"]) if noise else 0.0


def _feature_job(arch: dict[str, Any], dataset: str, budget: Budget, seed: int,
                 device: str) -> dict[str, Any]:
    a = ArchConfig.from_dict(arch)
    feats, run = features(a, dataset=dataset, budget=budget, seed=seed, device=device)
    return {"arch_id": a.arch_id, **feats, "seconds": run.seconds,
            "reason": run.reason if run.failed else ""}


def _budget_key(budget: Budget, seed: int) -> str:
    return json.dumps({**dataclasses.asdict(budget), "seed": seed}, sort_keys=True)


def fit_estimate(*, dataset: str = "fashion-mnist", protocol: str | None = None,
                 with_sets: Sequence[str] = (), budget: Budget | str = "quick", seed: int = 0,
                 min_seeds: int = 1, workers: int = 1, device: str = "cpu",
                 out_dir: Path | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[EstimateModel, list[Path]]:
    """Design rows -> cached features -> fitted model, written with its report."""
    budget = Budget.parse(budget)
    rows, pid, source = design_rows(dataset, protocol=protocol, with_sets=with_sets,
                                    min_seeds=min_seeds)
    path = model_path(dataset) if out_dir is None else out_dir / model_path(dataset).name
    cache_path = path.with_name(path.stem + "-features.csv")
    key = _budget_key(budget, seed)
    cache = pd.read_csv(cache_path) if cache_path.is_file() else pd.DataFrame()
    have: set[str] = set()
    if not cache.empty:
        # A successful run cached before quick_val_loss existed is run again.
        cache = cache.reindex(columns=[*cache.columns, *(f for f in FEATURES
                                                           if f not in cache.columns)])
        stale = cache["quick_acc"].notna() & cache["quick_val_loss"].isna()
        have = set(cache.loc[(cache["budget"] == key) & ~stale, "arch_id"])
    todo = [a for a in rows["arch"] if a.arch_id not in have]
    jobs = [(_feature_job, (a.to_dict(), dataset, budget, seed, device)) for a in todo]
    for i, part in enumerate(_run(jobs, workers, "cpu" if device == "cpu" else "cuda"), 1):
        cache = pd.concat([cache, pd.DataFrame([{**part, "budget": key}])], ignore_index=True)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache.to_csv(cache_path, index=False)
        if log:
            log(f"[{i}/{len(jobs)}] {part['arch_id']}: quick_acc {part['quick_acc']:.2f} "
                f"({part['seconds']:.0f} s)")
    mine = cache[cache["budget"] == key].drop_duplicates("arch_id", keep="last")
    table = rows.drop(columns=["arch"]).merge(mine.drop(columns=["budget"]), on="arch_id")
    model = fit(table.to_dict("records"), dataset=dataset, budget=budget, seed=seed,
                protocol=pid, source=source, target_noise=seed_noise_of(dataset, pid))
    written = [model.save(path), _write_report(model, table, path.with_suffix(".md"))]
    return model, written


def _write_report(model: EstimateModel, table: pd.DataFrame, path: Path) -> Path:
    tried = pd.DataFrame(model.candidates)
    tried["features"] = tried["features"].map(", ".join)
    tried = tried.sort_values(["loo_rmse", "alpha"]).reset_index(drop=True)
    shown = table.copy()
    shown["predicted"] = [model.predict(r)[0] if all(np.isfinite(r[f]) for f in model.features)
                          else np.nan for r in shown.to_dict("records")]
    lines = [
        f"# Accuracy estimate: {model.dataset}", "",
        "`python -m proxies estimate fit` (`proxies/estimate.py`, `proxies/estimate_fit.py`).",
        "", f"Target: mean held-out accuracy (%) of protocol `{model.protocol}`. Design rows: "
        f"{model.source} ({len(model.fitted_on)} architectures). The holdout half is not "
        "read here; it judges the estimate in `proxies/reports/against_holdout`.", "",
        f"Chosen: ridge (alpha {model.alpha}) over **{', '.join(model.features)}**; "
        f"leave-one-out over the design rows: RMSE {model.loo_rmse:.2f} points, Kendall tau "
        f"{model.loo_tau:.2f}. Stated residual {_residual(model)}. Features from budget "
        f"{Budget(**model.budget)}, seed {model.seed}; {_machine()}.", "",
        "## Candidates (leave-one-out over the design rows)", "",
        "The fit picks the simplest candidate (fewest features, then the largest alpha) whose "
        "leave-one-out MSE is within one standard error (`loo_mse_se`) of the lowest.", "",
        _md(tried[["features", "alpha", "n", "loo_rmse", "loo_mse_se", "loo_tau"]]), "",
        "## Baselines on the same rows", "",
        "Kendall tau of each single feature with the reference (no fit: rank only; params, "
        "FLOPs and synflow are the baselines an estimate must beat), next to the chosen "
        "model's leave-one-out tau:", "",
        _md(_baselines(table, model)), "",
        "## Design rows (in-sample prediction of the chosen model)", "",
        _md(shown[["arch_id", "source", "n_seeds", "reference", "predicted",
                              *FEATURES, "seconds"]].sort_values("reference")), "",
    ]
    path.write_text("\n".join(lines))
    return path


def _residual(model: EstimateModel) -> str:
    if model.residual is None or model.target_noise <= 0:
        return f"{model.loo_rmse:.2f} points (the leave-one-out RMSE; no seed noise known)"
    return (f"{model.residual:.2f} points: the leave-one-out RMSE without the design rows' "
            f"own seed noise (the set's {model.target_noise:.2f} points per run, over each "
            "row's seeds), i.e. the error predicting an architecture's mean accuracy")


def _baselines(table: pd.DataFrame, model: EstimateModel) -> pd.DataFrame:
    from scipy import stats

    rows = []
    for f in FEATURES:
        ok = table[[f, "reference"]].dropna()
        tau = stats.kendalltau(ok[f], ok["reference"]).statistic if len(ok) > 2 else np.nan
        rows.append({"predictor": f, "kendall_tau": float(tau), "n": len(ok)})
    rows.append({"predictor": f"estimate (leave-one-out; {', '.join(model.features)})",
                 "kendall_tau": model.loo_tau, "n": len(model.fitted_on)})
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to 4 significant digits)."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(cell(v) for v in r) for r in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)
