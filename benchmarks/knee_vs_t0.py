"""The default search's knee against FasterNet-T0, trained under one protocol (issue 25).

    python benchmarks/knee_vs_t0.py [--run results/default-arm] [--pick knee] [--train]

The user's question after a search: is the network it found better than T0 at its latency?
This takes the knee of the run's front (as `search.py export --pick knee` picks it) and
FasterNet-T0, and puts side by side:

- accuracy: the ground truth, every seed of every committed reference set under one protocol
  (default the committed sets' `e10-b256-lr0.0005-r32`: 10 epochs of the full Fashion-MNIST training
  split, the test split held out; `proxies/reference/README.md`), trained by the project's one
  loop (`search.py train`'s, `TrainConfig.from_protocol`); beside it the search's own estimate;
- latency: the run's table (what the search optimized) and both networks measured whole here
  (the build protocol: 1 thread, batch 1, 224x224; the machine is named).

`--train` first trains the seeds the knee lacks, as a reference set of its own
(`proxies/reference/knee-<run>/`, one row per finished run: resumable, commit as they come):
`python -m proxies reference build --n 0 --extra knee=ARCH.yaml --only knee`.
The report is `reports/knee_vs_t0.md` (and `.json`, which the README's headline reads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from latency_tables import Protocol  # noqa: E402
from latency_tables._device import describe_device, last_level_cache_bytes  # noqa: E402
from latency_tables.validate import measure_networks  # noqa: E402
from optimize.cli import front_member, open_run_study  # noqa: E402
from optimize.report import presets_of  # noqa: E402
from optimize.runner import STUDY_NAME  # noqa: E402
from proxies import reference  # noqa: E402
from search_space import PRESETS, ArchConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("reports") / "knee_vs_t0.md"
PROTOCOL = "lr=0.0005"  # the committed sets' protocol: e10-b256-lr0.0005-r32


def ground_truth(arch_ids: set[str], protocol_id: str) -> pd.DataFrame:
    """Every finished run of `arch_ids` under `protocol_id` in the committed reference sets,
    one row per (architecture, seed) (a CPU run first where a seed ran on several devices)."""
    frames = [reference.load(p.parent) for p in sorted(reference.HERE.glob(f"*/{reference.SET_FILE}"))]
    runs = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    runs = runs[runs["arch_id"].isin(arch_ids) & (runs["protocol_id"] == protocol_id)]
    runs = runs.assign(on_gpu=runs["device"].str.startswith("cuda")).sort_values(["on_gpu", "date"])
    return runs.drop_duplicates(["arch_id", "seed"]).sort_values(["arch_id", "seed"])


def train_knee(arch: ArchConfig, run: Path, protocol: str, workers: int, limit: int | None) -> None:
    """The knee's missing seeds, as the reference set `knee-<run>` (resumable)."""
    folder = reference.HERE / f"knee-{run.name}"
    folder.mkdir(parents=True, exist_ok=True)
    yaml = folder / "knee.yaml"
    arch.save(yaml)
    subprocess.run([sys.executable, "-m", "proxies", "reference", "build", "--out", str(folder),
                    "--n", "0", "--extra", f"knee={yaml}", "--only", "knee",
                    "--protocol", protocol, "--workers", str(workers),
                    *(["--limit", str(limit)] if limit else [])], cwd=ROOT, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "results" / "default-arm"))
    p.add_argument("--pick", default="knee")
    p.add_argument("--protocol", default=PROTOCOL, help="the ground truth's protocol: key=value "
                   "changes to the default (`python -m proxies reference build --protocol`)")
    p.add_argument("--train", action="store_true", help="train the knee's missing seeds first")
    p.add_argument("--workers", type=int, default=1, help="with --train: training processes")
    p.add_argument("--limit", type=int, default=None, help="with --train: at most this many runs")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    run = Path(args.run)
    chosen, device = front_member(run, device=None, pick=args.pick, max_latency=None)
    if args.train:
        train_knee(chosen.arch, run, args.protocol, args.workers, args.limit)
    study = open_run_study(run, None, STUDY_NAME)
    source = (study.user_attrs.get("run") or {}).get("sources", {}).get(device, "")
    t0 = next(c for c in presets_of(study) if c.arch_id == PRESETS["fasternet_t0"].arch_id)
    nets = {args.pick: chosen, "fasternet_t0": t0}
    protocol_id = reference.Protocol.parse(args.protocol).protocol_id
    truth = ground_truth({c.arch_id for c in nets.values()}, protocol_id)
    torch.set_num_threads(1)
    here = measure_networks([c.arch for c in nets.values()],
                            Protocol(context_bytes=last_level_cache_bytes()), 224, rounds=3)
    machine = describe_device("cpu")
    lines = [f"# {args.pick.capitalize()} of `{run.name}` against FasterNet-T0 "
             "(`benchmarks/knee_vs_t0.py`)", "",
             f"Ground truth: protocol `{protocol_id}` (`proxies/reference/README.md`), every "
             "committed reference set's runs of the two networks, one row per seed. Latency: the "
             f"run's `{device}` table ({source}) and measured whole on this machine "
             f"({machine['cpu_model']}, {machine['logical_cpus']} logical CPUs, torch "
             f"{machine['torch']}; 1 thread, batch 1, 224x224, min of 3 rounds).", "",
             "| network | arch | search's estimate | test accuracy: mean ± sd (seeds) | trained on "
             f"| {device} table ms | ms here |", "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    means = {}
    for (name, c), ms in zip(nets.items(), here):
        rows = truth[truth["arch_id"] == c.arch_id]
        acc = rows["accuracy"].to_numpy() * 100
        means[name] = acc
        seeds = ", ".join(f"{a:.2f}" for a in acc)
        gt = (f"{acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else float('nan'):.2f} % "
              f"({len(acc)}: {seeds})" if len(acc) else "not trained yet")
        where = "; ".join(sorted(set(rows["device"] + " " + rows["machine"].str.replace("vm: ", ""))))
        est = (f"{100 * c.accuracy:.2f} %" if c.accuracy is not None else "–")
        lines.append(f"| {name} | {c.arch_id} {c.arch} | {est} | {gt} | {where or '–'} | "
                     f"{c.latency_ms.get(device, float('nan')):.1f} | {ms:.2f} |")
    k, t = means[args.pick], means["fasternet_t0"]
    summary = {"run": run.name, "pick": args.pick, "protocol": protocol_id, "device": device,
               "machine": machine["cpu_model"],
               "networks": {name: {"arch_id": c.arch_id, "accuracy_pct": list(means[name]),
                                   "table_ms": c.latency_ms.get(device), "here_ms": ms}
                            for (name, c), ms in zip(nets.items(), here)}}
    lines.append("")
    if len(k) >= 2 and len(t) >= 2:
        se = np.sqrt(k.var(ddof=1) / len(k) + t.var(ddof=1) / len(t))
        lines.append(f"Difference {args.pick} - T0: {k.mean() - t.mean():+.2f} points (standard error "
                     f"{se:.2f}, {len(k)} and {len(t)} seeds); latency {args.pick}/T0: "
                     f"{nets[args.pick].latency_ms[device] / t0.latency_ms[device]:.2f}x on the "
                     f"{device} table, {here[0] / here[1]:.2f}x measured here.")
    else:
        lines.append(f"Not enough seeds yet ({args.pick}: {len(k)}, T0: {len(t)}): run with "
                     "`--train` (about 15 min per seed on a 2-core CPU).")
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
