"""Does the search beat the hand-designed FasterNets? Samplers x early stopping x seeds x devices.

    python benchmarks/search_quality.py                  # all phases, resumable
    python benchmarks/search_quality.py --phase runs --shard 0/2 &   # two processes fill the
    python benchmarks/search_quality.py --phase runs --shard 1/2 &   # proxy cache side by side
    python benchmarks/search_quality.py --phase latency,reference,report

Phases (each writes under `--out`, default benchmarks/reports/search_quality/):

runs       For every device (`--devices`, default: this machine's measured table and the
           derived `arm`), sampler (TPE, NSGA-II, random), early stopping (off, on) and seed,
           one search of `--trials` evaluated candidates (the CLI's default proxy, budget
           `quick`, proxy seed 0) on an in-memory study; candidates go to runs/<run>.json.
           Proxy results are replayed from a shared cache (see `early_stopping.ReplayProxy`):
           every architecture is trained once, each run is charged the measured training time
           of what it evaluated (x the fraction of steps run when stopped early).
latency    The measured device's front members (union over its runs) and the presets T0, T1,
           T2 timed end to end on this machine with the table's own protocol
           (`latency_tables.validate.measure_networks`): does the predicted order hold?
reference  The best front member at most as slow as T0 (measured), and T0, trained at the
           proxy validation's reference budget (`full`, 10x the proxy) with two seeds each:
           does the win survive a longer training?
report     report.md + fronts.png + hypervolume.png.

Hypervolume of (proxy accuracy, latency): per device, both objectives are min-max
normalized over every fully trained candidate of every run on that device plus the
presets, and the reference point is the worst of them on both (the nadir). This is the
usual normalized hypervolume: it depends on no method's own results and on no hand-picked
constant. The raw hypervolume with the reference of `benchmarks/early_stopping.py`
(accuracy 0, 1.25 x the slowest preset's latency) is reported too; it is dominated by the
accuracy band every network reaches, so differences between methods look small on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from early_stopping import ReplayProxy  # noqa: E402
from scipy import stats  # noqa: E402

from latency_tables import LatencyTable  # noqa: E402
from optimize import Objective, ParetoEarlyStopping, collect, hypervolume, make_sampler  # noqa: E402
from optimize.report import dominates, markdown_table, pareto_mask  # noqa: E402
from optimize.runner import run_optuna  # noqa: E402
from proxies import ShortTrain, make_proxy  # noqa: E402
from search_space import PRESETS, ArchConfig, SearchSpace  # noqa: E402

PRESET_NAMES = ("fasternet_t0", "fasternet_t1", "fasternet_t2")
SAMPLERS = ("tpe", "nsga2", "random")
PHASES = ("runs", "latency", "reference", "report")


def run_name(device: str, sampler: str, early: bool, seed: int) -> str:
    return f"{device}_{sampler}_{'es' if early else 'noes'}_s{seed}"


def plan(args) -> list[list[tuple[str, str, bool, int]]]:
    """Runs in groups of one (early stopping, seed, sampler): a group's runs share many
    architectures (random search proposes the same ones on every device), so a group stays in
    one process. Without early stopping first, then seed-major: a benchmark cut short still
    has whole seeds of the main comparison."""
    return [[(d, sampler, early, seed) for d in args.devices]
            for early in args.early for seed in args.seeds for sampler in args.samplers]


def do_run(device: str, sampler: str, early: bool, seed: int, args, proxy: ReplayProxy,
           space: SearchSpace) -> dict:
    table = LatencyTable.load(device)
    proxy.charged, trained, training_s = 0.0, proxy.trained, proxy.training_s
    objective = Objective(space=space, latency={device: table}, proxy=proxy,
                          early_stopping=ParetoEarlyStopping() if early else None)
    study = optuna.create_study(directions=objective.directions,
                                sampler=make_sampler(sampler, seed, args.trials))
    start = time.perf_counter()
    run_optuna(study, objective, args.trials)
    # The run's own time (sampler, objective, bookkeeping): wall time less cache-miss training.
    overhead = time.perf_counter() - start - (proxy.training_s - training_s)
    cands = [{"number": c.number, "state": c.state, "arch": c.arch.to_dict(),
              "arch_id": c.arch_id, "accuracy": c.accuracy, "latency_ms": c.latency_ms[device]}
             for c in collect(study) if c.arch is not None and device in c.latency_ms]
    return {"device": device, "source": table.source, "sampler": sampler, "early": early,
            "seed": seed, "trials": args.trials, "budget": str(proxy.budget),
            "proxy_seconds": proxy.charged, "overhead_s": overhead,
            "newly_trained": proxy.trained - trained, "candidates": cands}


def phase_runs(args, out: Path, proxy: ReplayProxy) -> None:
    space = SearchSpace.default()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    index, count = (int(x) for x in args.shard.split("/"))
    mine = [run for i, group in enumerate(plan(args)) if i % count == index for run in group]
    for device, sampler, early, seed in mine:
        path = out / "runs" / f"{run_name(device, sampler, early, seed)}.json"
        if path.exists():
            continue
        res = do_run(device, sampler, early, seed, args, proxy, space)
        path.write_text(json.dumps(res))
        print(f"{path.stem}: {res['proxy_seconds']:.0f} s proxy, {res['newly_trained']} newly "
              f"trained, {res['overhead_s']:.1f} s overhead", flush=True)


def load_runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def presets(device: str, proxy: ReplayProxy) -> dict[str, tuple[float, float]]:
    table = LatencyTable.load(device)
    return {n: (proxy(PRESETS[n]).accuracy, table.predict(PRESETS[n])) for n in PRESET_NAMES}


def front_of(cands: list[dict]) -> list[dict]:
    done = [c for c in cands if c["state"] == "complete" and c["accuracy"] is not None]
    mask = pareto_mask([c["accuracy"] for c in done], [c["latency_ms"] for c in done])
    return sorted((c for c, m in zip(done, mask) if m), key=lambda c: c["latency_ms"])


def dominates_preset(front: list[dict], acc: float, ms: float) -> bool:
    return dominates([c["accuracy"] for c in front], [c["latency_ms"] for c in front], acc, ms)


def summarize(runs: list[dict], pre: dict[str, dict[str, tuple[float, float]]]) -> pd.DataFrame:
    """One row per run: hypervolumes (normalized and raw), proxy time, presets dominated."""
    rows = []
    for device in sorted({r["device"] for r in runs}):
        mine = [r for r in runs if r["device"] == device]
        pts = [(c["accuracy"], c["latency_ms"]) for r in mine for c in r["candidates"]
               if c["state"] == "complete" and c["accuracy"] is not None]
        pts += list(pre[device].values())
        acc, lat = np.array(pts).T
        lo_a, lo_l = acc.min(), lat.min()
        span_a, span_l = max(acc.max() - lo_a, 1e-12), max(lat.max() - lo_l, 1e-12)
        raw_ref = 1.25 * max(ms for _, ms in pre[device].values())
        for r in mine:
            front = front_of(r["candidates"])
            hv = hypervolume([(c["accuracy"] - lo_a) / span_a for c in front],
                             [(c["latency_ms"] - lo_l) / span_l for c in front], 1.0)
            raw = hypervolume([c["accuracy"] for c in front], [c["latency_ms"] for c in front],
                              raw_ref)
            dom = [n.replace("fasternet_", "").upper() for n, (a, ms) in pre[device].items()
                   if dominates_preset(front, a, ms)]
            rows.append({"device": device, "source": r["source"], "sampler": r["sampler"],
                         "early_stopping": "on" if r["early"] else "off", "seed": r["seed"],
                         "hv": hv, "hv_raw": raw, "front": len(front),
                         "stopped": sum(c["state"] == "stopped_early" for c in r["candidates"]),
                         "proxy_s": r["proxy_seconds"], "overhead_s": r["overhead_s"],
                         "wall_s": r["proxy_seconds"] + r["overhead_s"],
                         "dominates": ", ".join(dom) or "none"})
    return pd.DataFrame(rows)


def measured_device(runs: list[dict]) -> str | None:
    return next((r["device"] for r in runs if r["source"] == "measured"), None)


def run_fronts(runs: list[dict], device: str) -> list[dict]:
    """Every architecture on the front of at least one run on `device`, once."""
    seen: dict[str, dict] = {}
    for r in runs:
        if r["device"] == device:
            for c in front_of(r["candidates"]):
                seen.setdefault(c["arch_id"], c)
    return sorted(seen.values(), key=lambda c: c["latency_ms"])


def phase_latency(args, out: Path, proxy: ReplayProxy) -> None:
    from latency_tables.measure import Protocol
    from latency_tables.validate import measure_networks

    runs = load_runs(out)
    device = measured_device(runs)
    if device is None:
        print("latency: no run on a measured table; skipped")
        return
    table = LatencyTable.load(device)
    front = run_fronts(runs, device)
    archs = [ArchConfig.from_dict(c["arch"]) for c in front] + [PRESETS[n] for n in PRESET_NAMES]
    names = [f"front {c['arch_id']}" for c in front] + list(PRESET_NAMES)
    print(f"latency: timing {len(archs)} networks on this machine ({table.describe()})", flush=True)
    proto = Protocol.from_dict(table.meta.get("protocol", {}))  # the table's own protocol
    ms = measure_networks(archs, proto, table.resolution, rounds=args.rounds)
    rows = [{"name": n, "arch_id": a.arch_id, "arch": str(a), "accuracy": proxy(a).accuracy,
             "predicted_ms": table.predict(a), "measured_ms": m}
            for n, a, m in zip(names, archs, ms)]
    pd.DataFrame(rows).to_csv(out / "latency.csv", index=False)


def phase_reference(args, out: Path) -> None:
    if not (out / "latency.csv").exists():
        raise SystemExit(f"reference: no {out / 'latency.csv'}; run --phase latency first")
    lat = pd.read_csv(out / "latency.csv")
    t0 = lat[lat.name == "fasternet_t0"].iloc[0]
    front = lat[lat.name.str.startswith("front") & (lat.measured_ms <= t0.measured_ms)]
    if front.empty:
        print("reference: no front member is as fast as T0 (measured); skipped")
        return
    best = front.sort_values("accuracy").iloc[-1]
    arch_of = {c["arch_id"]: c["arch"] for r in load_runs(out) for c in r["candidates"]}
    pick = {"front": ArchConfig.from_dict(arch_of[best.arch_id]),
            "fasternet_t0": PRESETS["fasternet_t0"]}
    path = out / "reference.json"
    done = json.loads(path.read_text()) if path.exists() else []
    for seed in args.reference_seeds:
        for who, arch in pick.items():
            if any(d["arch_id"] == arch.arch_id and d["seed"] == seed for d in done):
                continue
            r = ShortTrain(budget=args.reference_budget, seed=seed)(arch)
            done.append({"who": who, "arch_id": arch.arch_id, "arch": str(arch), "seed": seed,
                         "budget": str(r.budget), "accuracy": r.accuracy, "seconds": r.seconds,
                         "failed": r.failed, "reason": r.reason})
            path.write_text(json.dumps(done, indent=1))
            print(f"reference: {who} seed {seed}: {r.accuracy} in {r.seconds:.0f} s", flush=True)


def phase_report(args, out: Path, proxy: ReplayProxy) -> None:
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"report: no runs under {out / 'runs'}; run --phase runs first")
    devices = sorted({r["device"] for r in runs})
    pre = {d: presets(d, proxy) for d in devices}
    df = summarize(runs, pre)
    df.to_csv(out / "runs.csv", index=False)
    methods = (df.groupby(["device", "sampler", "early_stopping"])
               .agg(seeds=("seed", "count"), hv_mean=("hv", "mean"), hv_std=("hv", "std"),
                    hv_raw_mean=("hv_raw", "mean"), proxy_s=("proxy_s", "mean"),
                    overhead_s=("overhead_s", "mean"), wall_s=("wall_s", "mean"),
                    dominates_t0_t1=("dominates", lambda s: int(sum("T0" in x and "T1" in x
                                                                    for x in s))))
               .reset_index())
    lines = ["# Search quality: samplers x Pareto early stopping x seeds", "",
             f"`python benchmarks/search_quality.py` ({args.trials} evaluated candidates per run, "
             f"proxy `short_train` budget quick, proxy seed 0, search seeds "
             f"{', '.join(map(str, sorted(df.seed.unique())))}).", "",
             "hv: normalized hypervolume of (proxy accuracy, latency) - both objectives min-max "
             "scaled over every fully trained candidate of every run on the device plus the "
             "presets, reference point = the worst of them (1 = a single point best on both). "
             "hv raw: accuracy x ms up to (accuracy 0, 1.25 x slowest preset). proxy s: "
             "measured training time of what the run evaluated (replayed from the cache); search "
             "s: the run's own time (sampler, objective, bookkeeping); wall s: their sum, the "
             "run's wall time without the replay. "
             "dominates T0&T1: runs whose front dominates both presets.", ""]
    for device in devices:
        m = methods[methods.device == device].sort_values("hv_mean", ascending=False)
        src = df[df.device == device].source.iloc[0]
        rand = m[(m.sampler == "random") & (m.early_stopping == "off")].hv_mean
        lines += [f"## {device} ({src} table)", "",
                  "| sampler | early stopping | seeds | hv mean +- std | vs random | hv raw mean "
                  "| proxy s | search s | wall s | dominates T0&T1 |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for _, row in m.iterrows():
            vs = f"{row.hv_mean / rand.iloc[0] - 1:+.1%}" if len(rand) else "n/a"
            lines.append(f"| {row.sampler} | {row.early_stopping} | {row.seeds} | "
                         f"{row.hv_mean:.3f} +- {row.hv_std:.3f} | {vs} | {row.hv_raw_mean:.2f} | "
                         f"{row.proxy_s:.0f} | {row.overhead_s:.1f} | {row.wall_s:.0f} | "
                         f"{row.dominates_t0_t1}/{row.seeds} |")
        lines += [""] + verdict(df[df.device == device], m)
        lines += ["", "Presets (same proxy and table): " + ", ".join(
            f"{n.replace('fasternet_', '').upper()} acc {a:.3f} at {ms:.2f} ms"
            for n, (a, ms) in pre[device].items()), ""]
    lines += ["## Every run", "", markdown_table(df.drop(columns=["source"])), ""]
    lines += latency_section(out) + reference_section(out)
    plot(df, runs, pre, out)
    lines += ["![hypervolume](hypervolume.png)", "", "![fronts](fronts.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


def verdict(runs: pd.DataFrame, methods: pd.DataFrame) -> list[str]:
    """The best method against random search (no early stopping), seed by seed."""
    best = methods.iloc[0]
    rand = runs[(runs.sampler == "random") & (runs.early_stopping == "off")].set_index("seed").hv
    if best.sampler == "random" or rand.empty:
        return [f"Best method: {best.sampler}, early stopping {best.early_stopping}."]
    mine = runs[(runs.sampler == best.sampler)
                & (runs.early_stopping == best.early_stopping)].set_index("seed").hv
    seeds = sorted(set(mine.index) & set(rand.index))
    wins = sum(mine[s] > rand[s] for s in seeds)
    gain = mine[seeds].mean() / rand[seeds].mean() - 1
    return [f"Best method: {best.sampler}, early stopping {best.early_stopping}: mean "
            f"hypervolume {gain:+.1%} vs random search (goal >= +10%: "
            f"{'met' if gain >= 0.10 else 'not met'}); higher than random's in {wins} of "
            f"{len(seeds)} seeds."]


def latency_section(out: Path) -> list[str]:
    path = out / "latency.csv"
    if not path.exists():
        return []
    lat = pd.read_csv(path)
    tau = stats.kendalltau(lat.predicted_ms, lat.measured_ms).statistic
    front = lat[lat.name.str.startswith("front")]
    order_ok = sum(1 for i in range(len(lat)) for j in range(len(lat))
                   if lat.predicted_ms[i] < lat.predicted_ms[j]
                   and lat.measured_ms[i] < lat.measured_ms[j])
    pairs = sum(1 for i in range(len(lat)) for j in range(len(lat))
                if lat.predicted_ms[i] < lat.predicted_ms[j])
    rows = [{"accuracy": a, "measured_ms": m, "state": "complete"}
            for a, m in zip(front.accuracy, front.measured_ms)]
    pooled = front_of([{**r, "latency_ms": r["measured_ms"]} for r in rows])
    dom = [n.replace("fasternet_", "").upper() for n in PRESET_NAMES
           for p in [lat[lat.name == n].iloc[0]] if dominates_preset(pooled, p.accuracy, p.measured_ms)]
    err = (lat.predicted_ms / lat.measured_ms - 1).abs()
    return ["## Measured end-to-end latency (this machine, the table's protocol)", "",
            f"Every member of a front of a run on the measured table ({len(front)} architectures) "
            f"and the presets, timed whole: predicted vs measured Kendall tau {tau:.3f}, "
            f"{order_ok}/{pairs} pairs in the predicted order, mean |error| {err.mean():.1%}. "
            f"Their front on measured latency ({len(pooled)} architectures) dominates, at equal or "
            f"better proxy accuracy: "
            f"{', '.join(dom) or 'none'}.", "",
            markdown_table(lat.drop(columns=["arch"])), ""]


def reference_section(out: Path) -> list[str]:
    path = out / "reference.json"
    if not path.exists():
        return []
    ref = pd.DataFrame(json.loads(path.read_text()))
    lines = ["## Longer training (the proxy validation's reference budget)", "",
             "The most accurate (proxy) front member on the measured device that is at most "
             "as slow as T0 on measured latency, and T0, trained at the reference budget:", "",
             markdown_table(ref.drop(columns=["budget"])), ""]
    means = ref.groupby("who").accuracy.mean()
    if {"front", "fasternet_t0"} <= set(means.index):
        lines += [f"Mean over seeds: front member {means['front']:.4f}, T0 "
                  f"{means['fasternet_t0']:.4f} ({(means['front'] - means['fasternet_t0']) * 100:+.2f} "
                  "points); budget " + ref.budget.iloc[0] + ".", ""]
    return lines


def plot(df: pd.DataFrame, runs: list[dict], pre: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted(df.device.unique())
    fig, axes = plt.subplots(1, len(devices), figsize=(6 * len(devices), 4), squeeze=False)
    for ax, device in zip(axes[0], devices):
        d = df[df.device == device]
        labels = [f"{s}\n{e}" for s in SAMPLERS for e in ("off", "on")]
        data = [d[(d.sampler == s) & (d.early_stopping == e)].hv.to_numpy()
                for s in SAMPLERS for e in ("off", "on")]
        ax.boxplot(data, tick_labels=labels)
        ax.set_title(f"{device}: normalized hypervolume per seed")
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(devices), figsize=(6 * len(devices), 4.5), squeeze=False)
    for ax, device in zip(axes[0], devices):
        for sampler, color in zip(SAMPLERS, ("C0", "C1", "C2")):
            pts = [c for r in runs if r["device"] == device and r["sampler"] == sampler
                   for c in r["candidates"] if c["state"] == "complete"]
            ax.scatter([c["latency_ms"] for c in pts], [c["accuracy"] for c in pts], s=8,
                       alpha=0.3, color=color, label=f"{sampler} candidates")
            front = front_of(pts)
            ax.step([c["latency_ms"] for c in front], [c["accuracy"] for c in front],
                    where="post", color=color, label=f"{sampler} front (all seeds)")
        for name, (a, ms) in pre[device].items():
            ax.scatter([ms], [a], marker="*", s=150, color="k")
            ax.annotate(name.replace("fasternet_", "").upper(), (ms, a))
        src = next(r["source"] for r in runs if r["device"] == device)
        ax.set_xlabel(f"latency, ms ({device}, {src} table)")
        ax.set_ylabel("proxy accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fronts.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    p.add_argument("--devices", default=None,
                   help="comma list of latency tables (default: this machine's measured table, arm)")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--early-stopping", default="off,on", help="off, on, or both (default)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--budget", default="quick")
    p.add_argument("--shard", default="0/1", help="i/n: this process does run groups i, i+n, ...")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (latency phase)")
    p.add_argument("--reference-budget", default="full")
    p.add_argument("--reference-seeds", default="1,2")
    p.add_argument("--cache", default="benchmarks/reports/proxy_cache.json")
    p.add_argument("--out", default="benchmarks/reports/search_quality")
    args = p.parse_args()
    phases = [x.strip() for x in args.phase.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES]
    if bad:
        p.error(f"--phase: unknown {', '.join(bad)}; choose from {', '.join(PHASES)}")
    args.samplers = [s.strip() for s in args.samplers.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        p.error(f"--shard {args.shard!r}: expected i/n with 0 <= i < n, e.g. 0/2")
    choices = {"off": False, "on": True}
    if not set(args.early_stopping.split(",")) <= set(choices):
        p.error(f"--early-stopping {args.early_stopping!r}: choose off, on or off,on")
    args.early = [choices[x] for x in args.early_stopping.split(",")]
    args.reference_seeds = [int(s) for s in args.reference_seeds.split(",")]
    args.devices = (args.devices.split(",") if args.devices else [default_measured(), "arm"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proxy = ReplayProxy(make_proxy("short_train", budget=args.budget, seed=0), Path(args.cache))
    for phase in phases:
        if phase == "runs":
            phase_runs(args, out, proxy)
        elif phase == "latency":
            phase_latency(args, out, proxy)
        elif phase == "reference":
            phase_reference(args, out)
        else:
            phase_report(args, out, proxy)


def default_measured() -> str:
    from latency_tables.table import TableNotFoundError

    try:
        table = LatencyTable.load("auto")
    except TableNotFoundError as e:
        raise SystemExit(f"no measured table for this machine ({e}); pass --devices") from None
    return table.name


if __name__ == "__main__":
    main()
