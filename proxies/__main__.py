"""`python -m proxies validate --n 24 --seed 0 [--reference-seeds K] [--dataset fashion-mnist]
[--out DIR]` and `python -m proxies reference build|report` (`proxies.reference`).

Bad input gives a one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search_space import ArchError

from .data import DatasetError
from .device import DeviceError
from .registry import PROXIES

DEFAULT_OUT = Path(__file__).with_name("reports")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxies",
                                     description="Accuracy proxies for pconv-nas.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="rank correlation of every proxy with a longer training")
    v.add_argument("--n", type=int, default=24, help="architectures sampled (default 24)")
    v.add_argument("--seed", type=int, default=0, help="sampling and proxy seed (default 0)")
    v.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    v.add_argument("--budget", default="quick", help="proxy budget: level or key=value list")
    v.add_argument("--reference", default="full", help="reference budget (>= 10x the proxy's)")
    v.add_argument("--reference-seeds", type=int, default=1, metavar="K",
                   help="reference trainings per architecture, seeds SEED+1..SEED+K, averaged; "
                        "K >= 2 also measures the reference's repeatability (default 1)")
    v.add_argument("--proxies", default=",".join(PROXIES),
                   help=f"comma-separated subset of {','.join(PROXIES)}")
    v.add_argument("--against", default=None, metavar="SET",
                   help="rank against a committed reference set instead of training a "
                        "reference: `reference` (the set of --dataset) or a set folder")
    v.add_argument("--split", default="holdout", help="with --against: holdout, tune or all")
    v.add_argument("--protocol", default=None, help="with --against: the set's protocol id")
    v.add_argument("--min-seeds", type=int, default=None, metavar="K",
                   help="with --against: rank architectures with >= K of the protocol's seeds "
                        "(default: all), against the mean of those they have")
    v.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    v.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    v.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    _reference_parser(sub)
    e = sub.add_parser("estimate", help="the learned accuracy estimate (proxies/estimate.py)")
    esub = e.add_subparsers(dest="action", required=True)
    f = esub.add_parser("fit", help="fit it on the tune half of a reference set")
    f.add_argument("--dataset", default="fashion-mnist", help="the reference set's dataset")
    f.add_argument("--protocol", default=None, help="the set's protocol id (default: its first)")
    f.add_argument("--with", dest="with_sets", action="append", default=[], metavar="SET",
                   help="another set whose runs of the protocol are design rows too (e.g. "
                        "pilot); its architectures in the holdout half are left out")
    f.add_argument("--budget", default="quick", help="the features' proxy budget")
    f.add_argument("--seed", type=int, default=0, help="the features' seed")
    f.add_argument("--min-seeds", type=int, default=1, metavar="K",
                   help="design architectures need >= K reference seeds (default 1)")
    f.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    f.add_argument("--device", default="cpu", help="where the features are computed")
    return parser


def _reference_parser(sub: argparse._SubParsersAction) -> None:
    from .reference import HERE

    ref = sub.add_parser("reference", help="ground-truth sets: architectures x seeds trained "
                                           "to a complete schedule")
    rsub = ref.add_subparsers(dest="action", required=True)
    b = rsub.add_parser("build", help="draw a set (or reopen one) and train what it lacks")
    b.add_argument("--out", type=Path, default=None,
                   help=f"the set's folder (default {HERE}/<dataset>; reopened if it exists)")
    b.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    b.add_argument("--n", type=int, default=40,
                   help="sampled architectures (multiple of 5; 0: only the presets and --extra)")
    b.add_argument("--seed", type=int, default=0, help="sampling and split seed (default 0)")
    b.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    b.add_argument("--protocol", default=None, action="append",
                   help="key=value changes to the default protocol, e.g. epochs=20,lr=5e-4; "
                        "repeat for several protocols (a pilot)")
    b.add_argument("--pilot", action="store_true",
                   help="the pilot's architectures (smallest, tiny, T0, T1, T2, largest) "
                        "instead of a sampled set")
    b.add_argument("--only", default="", help="comma-separated roles or arch ids to train now")
    b.add_argument("--table", default="arm", help="latency table of the strata (default arm)")
    b.add_argument("--extra", default=None, action="append", metavar="ROLE=ARCH.yaml",
                   help="an extra architecture of a new set, e.g. a front member to re-check")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    b.add_argument("--workers", type=int, default=1, help="processes (one thread each on CPU)")
    b.add_argument("--shard", default="0/1", help="i/n: train only this shard of the runs")
    b.add_argument("--limit", type=int, default=None, help="train at most this many runs")
    b.add_argument("--order", choices=("longest", "cheapest"), default="longest",
                   help="within a protocol and seed: longest runs first (workers finish "
                        "together; default) or cheapest first (most runs in a short session)")
    r = rsub.add_parser("report", help="Markdown + plot of a set (spread, noise, ceiling)")
    r.add_argument("set", nargs="?", default="fashion-mnist", help="dataset name or folder")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reference":
        from .reference.cli import run

        return run(args)
    if args.command == "estimate":
        return _estimate(args)
    from .validate import markdown_table, validate, validate_against, write_report

    try:
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: must be >= 1")
        names = [p.strip() for p in args.proxies.split(",") if p.strip()]
        if args.against:
            out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT / f"against_{args.split}"
            # `--against reference`: the committed set of --dataset.
            against = args.dataset if args.against == "reference" else args.against
            report = validate_against(reference_set=against, split=args.split,
                                      protocol=args.protocol, seed=args.seed,
                                      budget=args.budget, proxies=names,
                                      workers=args.workers, out_dir=out, device=args.device,
                                      min_seeds=args.min_seeds,
                                      log=lambda line: print(line, flush=True))
            paths = write_report(report, out)
            print(markdown_table(report.table))
            print("wrote " + ", ".join(str(p) for p in paths))
            return 0
        report = validate(n=args.n, seed=args.seed, dataset=args.dataset, budget=args.budget,
                          reference=args.reference, reference_seeds=args.reference_seeds,
                          proxies=[p.strip() for p in args.proxies.split(",") if p.strip()],
                          workers=args.workers, out_dir=args.out, device=args.device,
                          log=lambda line: print(line, flush=True))
    except (DatasetError, DeviceError, ArchError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(report, args.out)
    print(markdown_table(report.table))
    if (rep := report.settings["repeatability"]) is not None:
        print(f"reference repeatability: seed noise {rep['within_std']:.2f} points, spread "
              f"{rep['between_std']:.2f} points, noise ceiling tau {rep['split_half_tau']:.3f}, "
              f"reliability {rep['reliability']:.2f}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from .estimate_fit import fit_estimate

    try:
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: must be >= 1")
        model, paths = fit_estimate(dataset=args.dataset, protocol=args.protocol,
                                    with_sets=args.with_sets, budget=args.budget,
                                    seed=args.seed, min_seeds=args.min_seeds,
                                    workers=args.workers, device=args.device,
                                    log=lambda line: print(line, flush=True))
    except (DatasetError, DeviceError, ArchError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(model.provenance)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
