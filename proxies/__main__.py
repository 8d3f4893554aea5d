"""`python -m proxies validate --n 24 --seed 0 [--reference-seeds K] [--dataset fashion-mnist]
[--out DIR]`.

Bad input gives a one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search_space import ArchError

from .data import DatasetError
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
    v.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    v.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .validate import markdown_table, validate, write_report

    try:
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: must be >= 1")
        report = validate(n=args.n, seed=args.seed, dataset=args.dataset, budget=args.budget,
                          reference=args.reference, reference_seeds=args.reference_seeds,
                          proxies=[p.strip() for p in args.proxies.split(",") if p.strip()],
                          workers=args.workers, out_dir=args.out,
                          log=lambda line: print(line, flush=True))
    except (DatasetError, ArchError, ValueError) as e:
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


if __name__ == "__main__":
    sys.exit(main())
