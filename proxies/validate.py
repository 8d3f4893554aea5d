"""How well does each proxy rank architectures? Kendall tau and Spearman rho against a
reference accuracy from a training budget at least 10x the default proxy's.

Protocol: sample `n` architectures from the default search space with one seeded
generator; for each, run every proxy at the proxy budget (seed `seed`) and a reference
`ShortTrain` at the reference budget with *other* seeds (`seed + 1` .. `seed + K`), so that
the proxy cannot agree with the reference merely through a shared initialization or batch
order. The reference is the mean over the K seeds. ``short_train`` and ``tse`` come from
the same short run (accuracy and minus the sum of training losses). Published anchors:
zero-cost proxies reach Spearman 0.58-0.76 on NAS-Bench-201 (Abdelfattah et al. 2021),
reduced training (EcoNAS) 0.61, TSE 0.95 at a quarter of training (Ru et al. 2021).

With K >= 2 the validation also measures its reference's repeatability
(`reference_repeatability`): the seed noise, the between-architecture spread, the
split-half Kendall tau of two reference trainings (the noise ceiling: a proxy cannot be
expected to rank the reference better than one reference training ranks another), and the
reliability of the K-seed mean (the variance-components form of the Spearman-Brown
formula, Shrout & Fleiss 1979, ICC(1,k)).

`validate` computes a `ValidationReport`; `write_report` renders it (CSV, PNG, Markdown).
Results are appended to ``rows.jsonl`` in the output folder as they finish (one line per
proxy run or reference training; lines of one architecture are merged on reading), so an
interrupted run resumes where it stopped and a later run with a larger K trains only the
missing seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from search_space import ArchConfig, SearchSpace, params_and_flops

from .base import Budget
from .data import load_dataset
from .device import device_name, resolve_device
from .registry import PROXIES
from .short_train import ShortTrain

__all__ = ["Repeatability", "ValidationReport", "correlations", "reference_repeatability",
           "validate", "validate_against", "write_report", "top_k_overlap"]

#: Minimum reference / proxy cost ratio (the issue's "at least 10x").
MIN_REFERENCE_RATIO = 10.0
#: The goal: ``short_train`` reaches this Kendall tau ...
GOAL_TAU = 0.7
#: ... in at most this fraction of the seconds of ONE reference training.
GOAL_COST = 0.1


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Per-architecture scores (`rows`) and per-proxy rank correlations (`table`)."""

    rows: pd.DataFrame
    """One row per architecture: arch_id, arch, <proxy>, <proxy>_seconds, ..., reference
    (mean over the reference seeds), reference_seconds (mean seconds of one reference
    training), and reference_s<seed>, reference_s<seed>_seconds for each reference seed."""
    table: pd.DataFrame
    """One row per proxy: kendall_tau, spearman_rho, n, mean_seconds, cost_vs_reference."""
    settings: dict[str, Any]
    """Budgets, seeds and timing; ``repeatability`` is a `Repeatability` as a dict (None
    with one reference seed)."""


@dataclasses.dataclass(frozen=True)
class Repeatability:
    """How well the reference agrees with itself across training seeds (accuracy points)."""

    seeds: tuple[int, ...]
    n: int
    """Architectures whose reference finished for every seed (the only ones used)."""
    within_std: float
    """Pooled within-architecture standard deviation over seeds: the noise of one training."""
    between_std: float
    """Standard deviation over architectures of the K-seed mean reference."""
    split_half_tau: float
    """Kendall tau-b between the first two seeds' references: the noise ceiling."""
    reliability: float
    """signal_var / (signal_var + noise_var / K), signal_var = max(0, var(mean) - noise_var/K):
    the share of the K-seed mean's variance over architectures that is not seed noise."""


def _column(seed: int) -> str:
    """The rows column of the reference trained with `seed`."""
    return f"reference_s{seed}"


def _evaluate_proxies(arch_dict: dict[str, Any], dataset: str, budget: Budget, seed: int,
                      names: tuple[str, ...], device: str = "cpu") -> dict[str, Any]:
    """Every proxy for one architecture (runs in a worker process)."""
    arch = ArchConfig.from_dict(arch_dict)
    row: dict[str, Any] = {"arch_id": arch.arch_id, "arch": str(arch)}
    short = (ShortTrain(dataset=dataset, budget=budget, seed=seed, device=device)(arch)
             if {"short_train", "tse"} & set(names) else None)
    for name in names:
        if name in ("short_train", "tse"):
            result = short
            score = result.score if name == "short_train" or result.failed else -result.tse
        elif name == "estimate" and short is not None:  # from the same quick run
            result = PROXIES[name](dataset=dataset, budget=budget, seed=seed,
                                   device=device).from_run(arch, short)
            score = result.score
        else:
            result = PROXIES[name](dataset=dataset, budget=budget, seed=seed, device=device)(arch)
            score = result.score
        row[name] = score if not result.failed else math.nan
        row[f"{name}_seconds"] = result.seconds
        if result.failed:
            row[f"{name}_reason"] = result.reason
    return row


def _evaluate_reference(arch_dict: dict[str, Any], dataset: str, reference: Budget,
                        seed: int, device: str = "cpu") -> dict[str, Any]:
    """One reference training of one architecture (runs in a worker process)."""
    arch = ArchConfig.from_dict(arch_dict)
    ref = ShortTrain(dataset=dataset, budget=reference, seed=seed, device=device)(arch)
    col = _column(seed)
    row: dict[str, Any] = {"arch_id": arch.arch_id, "arch": str(arch),
                           col: ref.accuracy if not ref.failed else math.nan,
                           f"{col}_seconds": ref.seconds}
    if ref.failed:
        row[f"{col}_reason"] = ref.reason
    return row


def top_k_overlap(score: pd.Series, reference: pd.Series, k: int = 5) -> float:
    """Share of the reference's top `k` architectures that are in the score's top `k`."""
    k = min(k, len(score))
    if k == 0:
        return math.nan
    return len(set(score.nlargest(k).index) & set(reference.nlargest(k).index)) / k


def correlations(rows: pd.DataFrame, names: Sequence[str],
                 noise_ceiling: float | None = None) -> pd.DataFrame:
    """Kendall tau-b, Spearman rho and top-5 overlap of each proxy column against
    ``reference`` (and tau / `noise_ceiling` when given). ``cost_vs_reference`` divides by
    the mean seconds of ONE reference training (one seed), not of the K it averages."""
    out = []
    ref_seconds = float(rows["reference_seconds"].mean())
    for name in names:
        ok = rows[[name, "reference"]].replace([np.inf, -np.inf], np.nan).dropna()
        tau = rho = math.nan
        if len(ok) >= 3:
            tau = float(stats.kendalltau(ok[name], ok["reference"]).statistic)
            rho = float(stats.spearmanr(ok[name], ok["reference"]).statistic)
        seconds = float(rows[f"{name}_seconds"].mean())
        row = {"proxy": name, "kendall_tau": tau, "spearman_rho": rho, "n": len(ok),
               "mean_seconds": seconds, "cost_vs_reference": seconds / ref_seconds}
        if noise_ceiling is not None:
            row["top5_overlap"] = top_k_overlap(ok[name], ok["reference"])
            row["tau_vs_ceiling"] = tau / noise_ceiling if noise_ceiling > 0 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def reference_repeatability(rows: pd.DataFrame, seeds: Sequence[int]) -> Repeatability:
    """Seed noise, spread, noise ceiling and reliability of the reference, from the columns
    ``reference_s<seed>`` (accuracy fractions) of `rows`; stds in accuracy points.

    Without clipping, the reliability equals ICC(1,k) = (MSB - MSW) / MSB of a one-way
    ANOVA (Shrout & Fleiss 1979), since var(mean) = MSB / K and noise_var = MSW.
    """
    seeds = tuple(seeds)
    if len(seeds) < 2:
        raise ValueError(f"reference seeds {seeds}: repeatability needs at least 2")
    points = rows[[_column(s) for s in seeds]].replace([np.inf, -np.inf], np.nan).dropna() * 100
    k = len(seeds)
    noise_var = float(points.var(axis=1, ddof=1).mean())  # pooled: every arch has K values
    mean_var = float(points.mean(axis=1).var(ddof=1))
    signal_var = max(0.0, mean_var - noise_var / k)
    total = signal_var + noise_var / k
    tau = math.nan
    if len(points) >= 3:  # as in `correlations`
        tau = float(stats.kendalltau(points.iloc[:, 0], points.iloc[:, 1]).statistic)
    return Repeatability(seeds=seeds, n=len(points), within_std=math.sqrt(noise_var),
                         between_std=math.sqrt(mean_var), split_half_tau=tau,
                         reliability=signal_var / total if total > 0 else math.nan)


def validate(*, n: int = 24, seed: int = 0, dataset: str = "fashion-mnist",
             budget: Budget | str = "quick", reference: Budget | str = "full",
             reference_seeds: int = 1, proxies: Sequence[str] | None = None,
             workers: int = 1, out_dir: Path | None = None, device: str = "auto",
             log: Callable[[str], None] | None = None) -> ValidationReport:
    """Sample `n` architectures, score them with every proxy and the reference.

    Args:
        reference_seeds: K, reference trainings per architecture, with seeds ``seed + 1``
            .. ``seed + K``; the reference is their mean. K >= 2 also measures the
            reference's repeatability (``settings["repeatability"]``).
        workers: processes (one thread each); results do not depend on it.
        device: where proxies and references train (``auto``: CUDA when available).
        out_dir: where ``rows.jsonl`` is kept for resuming (None: no resume file). Only
            what it lacks is computed: a run with a larger K trains only the new seeds.
        log: called with one line per finished proxy run or reference training.
    """
    budget, reference = Budget.parse(budget), Budget.parse(reference)
    dev = resolve_device(device)
    names = tuple(proxies) if proxies else tuple(PROXIES)
    for name in names:
        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; choose from {', '.join(PROXIES)}")
    if n < 3:
        raise ValueError(f"--n {n}: need at least 3 architectures for a rank correlation")
    if isinstance(reference_seeds, bool) or not isinstance(reference_seeds, int) \
            or reference_seeds < 1:
        raise ValueError(f"--reference-seeds {reference_seeds!r}: must be an integer >= 1")
    if reference.cost < MIN_REFERENCE_RATIO * budget.cost:
        raise ValueError(f"reference budget costs {reference.cost / budget.cost:.1f}x the proxy "
                         f"budget; it must be at least {MIN_REFERENCE_RATIO:g}x")
    load_dataset(dataset)  # fail now on a bad dataset, not in a worker
    rng = np.random.default_rng(seed)
    space = SearchSpace.default()
    archs = [space.sample(rng) for _ in range(n)]
    ref_seeds = tuple(range(seed + 1, seed + 1 + reference_seeds))
    done = _load_rows(out_dir, [a.arch_id for a in archs], names, legacy_seed=seed + 1)
    resumed = len(done)
    jobs = _jobs(archs, done, dataset, budget, reference, seed, ref_seeds, names, str(dev))
    start = time.perf_counter()
    _collect(jobs, workers, dev.type, done, names, out_dir, log)
    rows = pd.DataFrame([_assemble(done[a.arch_id], names, ref_seeds) for a in archs])
    repeatability = (dataclasses.asdict(reference_repeatability(rows, ref_seeds))
                     if len(ref_seeds) >= 2 else None)
    settings = {"n": n, "seed": seed, "dataset": dataset, "proxies": list(names),
                "budget": dataclasses.asdict(budget), "reference": dataclasses.asdict(reference),
                "reference_seeds": list(ref_seeds), "cost_ratio": reference.cost / budget.cost,
                "workers": workers, "device": device_name(dev),
                "wall_seconds": time.perf_counter() - start,
                "resumed_rows": resumed,
                "proxy_runs": sum(fn is _evaluate_proxies for fn, _ in jobs),
                "reference_trainings": sum(fn is _evaluate_reference for fn, _ in jobs),
                "repeatability": repeatability, "machine": _machine()}
    return ValidationReport(rows, correlations(rows, names), settings)


def validate_against(*, reference_set: str | Path = "fashion-mnist", split: str = "holdout",
                     protocol: str | None = None, seed: int = 0, budget: Budget | str = "quick",
                     proxies: Sequence[str] | None = None, workers: int = 1,
                     out_dir: Path | None = None, device: str = "auto",
                     min_seeds: int | None = None,
                     log: Callable[[str], None] | None = None) -> ValidationReport:
    """Every proxy on the `split` architectures of a committed reference set, ranked against
    the set's K-seed mean accuracy (no reference training: the set is the reference).

    Args:
        reference_set: a dataset name with a committed set (`proxies.reference.load`) or
            a set folder. Proxies run on the set's dataset.
        split: ``holdout`` (judging; never design on it), ``tune`` or ``all``.
        protocol: the set's protocol id to rank against (default: its only / first one).
        seed: the proxies' seed.
        min_seeds: rank every architecture with at least this many of the protocol's
            seeds, against the mean of those it has (default: all of them; a partial set
            says so in the report).
    """
    from .reference import ReferenceSet, folder_of
    from .reference.report import summarize

    budget = Budget.parse(budget)
    dev = resolve_device(device)
    names = tuple(proxies) if proxies else tuple(PROXIES)
    for name in names:
        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; choose from {', '.join(PROXIES)}")
    if split not in ("holdout", "tune", "all"):
        raise ValueError(f"--split {split!r}: choose holdout, tune or all")
    folder = folder_of(reference_set)
    rset = ReferenceSet.load(folder)
    summaries = {s.protocol_id: s for s in summarize(folder)}
    pid = protocol or rset.protocols[0].protocol_id
    if pid not in summaries:
        raise ValueError(f"protocol {pid!r} is not in {folder}; it has "
                         f"{', '.join(summaries)}")
    summary = summaries[pid]
    need = len(summary.seeds) if min_seeds is None else min_seeds
    if need < 1:
        raise ValueError(f"--min-seeds {min_seeds}: must be >= 1")
    ref = summary.archs[summary.archs["n_seeds"] >= need]
    if split != "all":
        ref = ref[ref["split"] == split]
    if len(ref) < 3:
        raise ValueError(f"{folder}: only {len(ref)} {split} architectures have {need} or "
                         f"more seeds of protocol {pid}; build more of the set first (or "
                         "lower --min-seeds)")
    archs = [m.arch for m in rset.members if m.arch_id in set(ref["arch_id"])]
    done = _load_rows(out_dir, [a.arch_id for a in archs], names, legacy_seed=-1)
    resumed = len(done)
    jobs = _jobs(archs, done, rset.dataset, budget, budget, seed, (), names, str(dev))
    start = time.perf_counter()
    _collect(jobs, workers, dev.type, done, names, out_dir, log)
    means = ref.set_index("arch_id")
    rows = pd.DataFrame([{**_assemble(done[a.arch_id], names, ()),
                          "reference": float(means.loc[a.arch_id, "mean"]),
                          "reference_seconds": float(means.loc[a.arch_id, "seconds"]),
                          "split": means.loc[a.arch_id, "split"]} for a in archs])
    ceiling, how = summary.noise_ceiling, "the seed-vs-seed Kendall tau over the whole set"
    noise = summary.noise or {}
    if math.isnan(ceiling) and noise:  # too few seed pairs yet: what the variance implies
        ceiling = noise["ceiling_model"]
        how = (f"from the set's variance components, (2/pi) asin(ICC) with ICC "
               f"{noise['icc']:.2f}, seed noise on {noise['noise_df']} degrees of freedom")
    settings = {"n": len(archs), "seed": seed, "dataset": rset.dataset, "proxies": list(names),
                "budget": dataclasses.asdict(budget), "against": _shown(folder),
                "protocol": pid, "split": split, "reference_seeds": list(summary.seeds),
                "seeds_per_arch": sorted({int(k) for k in ref["n_seeds"]}),
                "noise_ceiling": ceiling, "noise_ceiling_how": how,
                "perfect_vs_one_seed": noise.get("perfect_vs_one_seed", math.nan),
                "workers": workers, "device": device_name(dev),
                "wall_seconds": time.perf_counter() - start, "resumed_rows": resumed,
                "proxy_runs": len(jobs), "reference_trainings": 0, "repeatability":
                summary.repeatability, "machine": _machine(), "cost_ratio": math.nan}
    return ValidationReport(rows, correlations(rows, names, noise_ceiling=ceiling), settings)


Job = tuple[Callable[..., dict[str, Any]], tuple]


def _jobs(archs: list[ArchConfig], done: dict[str, dict], dataset: str, budget: Budget,
          reference: Budget, seed: int, ref_seeds: tuple[int, ...],
          names: tuple[str, ...], device: str = "cpu") -> list[Job]:
    """What `done` lacks: a proxy run per architecture, a reference training per seed."""
    costed: list[tuple[float, Job]] = []
    for arch in archs:
        row = done.get(arch.arch_id, {})
        missing = [s for s in ref_seeds if _column(s) not in row]
        need = tuple(name for name in names if name not in row)  # stored ones are not rerun
        if not (missing or need):
            continue
        flops = params_and_flops(arch, budget.resolution, 10, 1).flops_g
        if need:
            costed.append((flops * budget.cost,
                           (_evaluate_proxies,
                            (arch.to_dict(), dataset, budget, seed, need, device))))
        costed.extend((flops * reference.cost,
                       (_evaluate_reference, (arch.to_dict(), dataset, reference, s, device)))
                      for s in missing)
    # Most expensive first (fvcore FLOPs at the proxy resolution x budget): load balance.
    costed.sort(key=lambda c: -c[0])
    return [job for _, job in costed]


def _collect(jobs: list[Job], workers: int, device_type: str, done: dict[str, dict],
             names: tuple[str, ...], out_dir: Path | None,
             log: Callable[[str], None] | None) -> None:
    """Run `jobs`, merge each finished part into `done` and append it to ``rows.jsonl``."""
    start = time.perf_counter()
    for i, part in enumerate(_run(jobs, workers, device_type), 1):
        done[part["arch_id"]] = {**done.get(part["arch_id"], {}), **part}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / "rows.jsonl", "a") as f:
                f.write(json.dumps({"key": _key(names), **part}) + "\n")
        if log:
            log(f"[{i}/{len(jobs)}] {part['arch_id']} {_describe(part, names)} "
                f"({time.perf_counter() - start:.0f} s)")


def _run(jobs: list[Job], workers: int, device_type: str = "cpu") -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for fn, args in jobs:
            yield fn(*args)
        return
    # CUDA cannot be used in a forked child: spawn the workers there.
    context = multiprocessing.get_context("spawn") if device_type == "cuda" else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        for future in as_completed(futures):
            yield future.result()


def _describe(part: dict[str, Any], names: tuple[str, ...]) -> str:
    """A finished job for the log: its reference seed and accuracy, or its first proxies."""
    for key, value in part.items():
        if key.removeprefix("reference_s").isdigit():
            return f"reference seed {key.removeprefix('reference_s')}={value:.4f}"
    return " ".join(f"{name}={part[name]:.4g}" for name in [n for n in names if n in part][:2])


def _assemble(row: dict[str, Any], names: tuple[str, ...],
              ref_seeds: tuple[int, ...]) -> dict[str, Any]:
    """The report row of one architecture: proxies, the mean reference over `ref_seeds`
    (NaN if any seed failed), the mean seconds of one reference training, the per-seed values."""
    out = {"arch_id": row["arch_id"], "arch": row["arch"]}
    for name in names:
        out[name], out[f"{name}_seconds"] = row[name], row[f"{name}_seconds"]
        if f"{name}_reason" in row:
            out[f"{name}_reason"] = row[f"{name}_reason"]
    cols = [_column(s) for s in ref_seeds]
    if not cols:  # the reference comes from elsewhere (a reference set)
        return out
    out["reference"] = float(np.mean([row[c] for c in cols]))
    out["reference_seconds"] = float(np.mean([row[f"{c}_seconds"] for c in cols]))
    for c in cols:
        out[c], out[f"{c}_seconds"] = row[c], row[f"{c}_seconds"]
        if f"{c}_reason" in row:
            out[f"{c}_reason"] = row[f"{c}_reason"]
    return out


def _key(names: tuple[str, ...]) -> str:
    return ",".join(names)


def _load_rows(out_dir: Path | None, ids: list[str], names: tuple[str, ...],
               legacy_seed: int) -> dict[str, dict]:
    """Results of earlier runs, the lines of each architecture merged (later lines win): every
    proxy of `names` a line holds, and the references; a proxy no line holds runs again.
    Budgets are not checked: delete rows.jsonl after changing them.

    Lines written before per-seed references hold ``reference`` and ``reference_seconds``
    of one training with seed ``seed + 1`` (`legacy_seed`); they are read as that seed's.
    """
    path = None if out_dir is None else out_dir / "rows.jsonl"
    if path is None or not path.is_file():
        return {}
    rows: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        stored = set(str(row.pop("key", "")).split(","))
        if row["arch_id"] not in ids:
            continue
        # A line holds the proxies of its key (an earlier run may have asked for others):
        # keep those this run asks for, and the reference columns.
        keep = stored & set(names)
        row = {k: v for k, v in row.items()
               if (base := k.removesuffix("_seconds").removesuffix("_reason")) not in PROXIES
               or base in keep}
        if "reference" in row:
            col = _column(legacy_seed)
            row[col], row[f"{col}_seconds"] = row.pop("reference"), row.pop("reference_seconds")
        rows[row["arch_id"]] = {**rows.get(row["arch_id"], {}), **row}
    return rows


def _machine() -> str:
    import torch

    from latency_tables._device import cpu_model

    return (f"{cpu_model()} ({platform.machine()}), python {platform.python_version()}, "
            f"torch {torch.__version__}, 1 thread per worker")


def write_report(report: ValidationReport, out_dir: Path) -> list[Path]:
    """Write rows.csv, correlations.csv, correlations.png, report.md and settings.json (what
    was compared, on which machine) into `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "rows.csv", out_dir / "correlations.csv", out_dir / "correlations.png",
             out_dir / "report.md"]
    report.rows.to_csv(paths[0], index=False)
    report.table.to_csv(paths[1], index=False, float_format="%.4f")
    (out_dir / "settings.json").write_text(json.dumps(report.settings, indent=1, default=str)
                                           + "\n")

    table = report.table
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    pos = np.arange(len(table))
    ax1.bar(pos - 0.2, table["kendall_tau"], 0.4, label="Kendall tau")
    ax1.bar(pos + 0.2, table["spearman_rho"], 0.4, label="Spearman rho")
    ax1.axhline(0.7, color="grey", lw=0.8, ls="--")
    ax1.set_xticks(pos, table["proxy"], rotation=30)
    ax1.set_ylabel("rank correlation with reference")
    ax1.set_ylim(-1, 1)
    ax1.legend(loc="lower left")
    rows = report.rows
    ax2.scatter(rows["short_train"] * 100 if "short_train" in rows else [],
                rows["reference"] * 100 if "short_train" in rows else [])
    ax2.set_xlabel("short_train accuracy (%)")
    ax2.set_ylabel("reference accuracy (%)")
    s = report.settings
    k = len(s["reference_seeds"])
    if "against" in s:
        fig.suptitle(f"{s['dataset']}, N={s['n']} {s['split']} architectures of the reference "
                     f"set, protocol {s['protocol']}, mean of {k} seeds")
    else:
        fig.suptitle(f"{s['dataset']}, N={s['n']}, seed={s['seed']}, reference = "
                     f"{s['cost_ratio']:.0f}x proxy cost" + (f", mean of {k} seeds" if k > 1 else ""))
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    paths[3].write_text(_markdown(report))
    return paths


def markdown_table(table: pd.DataFrame) -> str:
    extra = "top5_overlap" in table
    lines = ["| proxy | Kendall tau | Spearman rho | N | mean s / arch | cost vs reference |"
             + (" top-5 overlap | tau / noise ceiling |" if extra else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if extra else "")]
    for r in table.itertuples():
        lines.append(f"| {r.proxy} | {r.kendall_tau:.3f} | {r.spearman_rho:.3f} | {r.n} | "
                     f"{r.mean_seconds:.2f} | {r.cost_vs_reference:.3f} |"
                     + (f" {r.top5_overlap:.2f} | {r.tau_vs_ceiling:.2f} |" if extra else ""))
    return "\n".join(lines)


def _against_markdown(report: ValidationReport) -> str:
    s = report.settings
    b = s["budget"]
    return "\n".join([
        "# Proxy validation against a reference set", "",
        f"`python -m proxies validate --against {s['against']} --split {s['split']}`", "",
        f"{s['n']} {s['split']} architectures of the reference set `{s['against']}` (protocol "
        f"`{s['protocol']}`, mean of seeds {', '.join(map(str, s['reference_seeds']))}"
        + _partial(s) + f"; its noise ceiling, "
        f"{s.get('noise_ceiling_how', 'the seed-vs-seed Kendall tau over the whole set')}, is "
        f"{s['noise_ceiling']:.3f}"
        + ("" if math.isnan(s.get("perfect_vs_one_seed", math.nan)) else
           f"; a predictor of every architecture's true mean would reach about "
           f"{s['perfect_vs_one_seed']:.2f} against one seed")
        + f"). Proxies at {b['steps']} steps x {b['batch_size']} images, "
        f"{b['resolution']} px, seed {s['seed']}. " + _which_half(s["split"]), "",
        markdown_table(report.table), "",
        f"Seconds are per architecture on {s.get('device', 'cpu')}, {s['machine']}; "
        "`cost vs reference` divides by the "
        "mean seconds of one reference training as recorded in the set (its device may "
        f"differ). Wall time {s['wall_seconds'] / 60:.1f} min with {s['workers']} worker(s); "
        f"{s['resumed_rows']} architectures resumed.", "",
        "![correlations](correlations.png)", ""])


def _shown(folder: Path) -> str:
    """A set folder as the report shows it: relative to the working directory when inside."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def _which_half(split: str) -> str:
    if split == "holdout":
        return "Every number here comes from the holdout half (the half no proxy was designed on)."
    if split == "tune":
        return "Every number here comes from the tune half (a design aid, not a judgment)."
    return ("Every number here comes from every architecture of the set, tune and holdout alike "
            "(a description, not a judgment of a proxy designed on the tune half).")


def _partial(s: dict) -> str:
    """How many seeds each architecture's reference mean has, where not all have every one."""
    per = s.get("seeds_per_arch", [])
    if not per or per == [len(s["reference_seeds"])]:
        return ""
    return (f", where an architecture has them: {'-'.join(map(str, (per[0], per[-1])))} seeds "
            "per architecture; a partial set")


def _markdown(report: ValidationReport) -> str:
    s = report.settings
    if "against" in s:
        return _against_markdown(report)
    b, r = s["budget"], s["reference"]
    seeds, rep = s["reference_seeds"], s["repeatability"]
    ref = report.rows["reference"].dropna() * 100
    short = report.table.set_index("proxy").reindex(["short_train"]).iloc[0]
    met = short.kendall_tau >= GOAL_TAU and short.cost_vs_reference <= GOAL_COST
    if met:
        ceiling = ""
    elif rep is None:
        ceiling = ("; the reference's own noise ceiling is unmeasured with one seed: rerun "
                   "with --reference-seeds 2")
    else:
        ceiling = (f"; noise ceiling: the seed {seeds[0]} and seed {seeds[1]} reference "
                   f"trainings rank the architectures at tau = {rep['split_half_tau']:.3f}")
    verdict = (f"Goal (short_train Kendall tau >= {GOAL_TAU} at <= {GOAL_COST:g} of the cost "
               f"of one reference training): {'met' if met else 'not met'} (tau = "
               f"{short.kendall_tau:.3f}, cost {short.cost_vs_reference:.3f}{ceiling}). "
               f"Reference accuracies span {ref.min():.2f}-{ref.max():.2f} % (range "
               f"{ref.max() - ref.min():.2f} points).")
    command = (f"python -m proxies validate --n {s['n']} --seed {s['seed']} "
               f"--dataset {s['dataset']}" + (f" --reference-seeds {len(seeds)}"
                                               if len(seeds) > 1 else ""))
    seed_text = (f"seed {seeds[0]}" if len(seeds) == 1
                 else f"mean of seeds {seeds[0]}-{seeds[-1]}")
    return "\n".join([
        "# Proxy validation", "",
        f"`{command}`", "",
        f"{s['n']} architectures sampled from the default search space; reference = "
        f"`ShortTrain` at {r['steps']} steps x {r['batch_size']} images, {r['resolution']} px, "
        f"{r['val_size']} validation images, {seed_text} "
        f"({s['cost_ratio']:.0f}x the proxy budget: {b['steps']} steps x {b['batch_size']}, "
        f"{b['resolution']} px, {b['val_size']} validation images, seed {s['seed']}).", "",
        markdown_table(report.table), "", verdict, "",
        *_repeatability_markdown(rep),
        f"Wall time {s['wall_seconds'] / 60:.1f} min with {s['workers']} worker(s) on "
        f"{s.get('device', 'cpu')}, {s['machine']} (architectures resumed from an earlier run: "
        f"{s['resumed_rows']}; "
        f"run now: {s['proxy_runs']} proxy runs, {s['reference_trainings']} reference "
        "trainings). Seconds are per architecture, one thread; `cost vs reference` is the "
        "ratio of mean seconds to those of ONE reference training (one seed).", "",
        "![correlations](correlations.png)", "",
    ])


def _repeatability_markdown(rep: dict[str, Any] | None) -> list[str]:
    if rep is None:
        return []
    seeds, k = rep["seeds"], len(rep["seeds"])
    return [
        "## Reference repeatability", "",
        f"Each architecture's reference trained with {k} seeds ({', '.join(map(str, seeds))}); "
        f"{rep['n']} architectures finished every seed.", "",
        "| measure | value |", "| --- | ---: |",
        f"| seed noise: pooled within-architecture std | {rep['within_std']:.2f} points |",
        f"| spread: between-architecture std of the {k}-seed mean | "
        f"{rep['between_std']:.2f} points |",
        f"| noise ceiling: Kendall tau, seed {seeds[0]} vs seed {seeds[1]} reference | "
        f"{rep['split_half_tau']:.3f} |",
        f"| reliability of the {k}-seed mean | {rep['reliability']:.2f} |", "",
        "The noise ceiling is how well one reference training ranks the architectures against "
        "another: a proxy cannot be expected to rank them better. Reliability is the share of "
        f"the {k}-seed mean's variance over architectures that is not seed noise, signal_var / "
        f"(signal_var + noise_var / {k}) with signal_var = max(0, var(mean) - noise_var / {k}).",
        "",
    ]
