"""`python -m proxies reference build|report`: the command-line side of `proxies.reference`.

Every configuration error (an unknown dataset, a bad protocol, a device this machine
lacks, a set file that does not parse) is one line on stderr and exit code 2, before any
training starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search_space import ArchConfig, ArchError

from ..data import DatasetError, load_dataset
from ..device import DeviceError, resolve_device
from . import HERE
from .build import SET_FILE, ReferenceSet, design_set, pilot_members, run_missing
from .protocol import Protocol

__all__ = ["run"]


def _slug(dataset: str) -> str:
    return dataset.strip().lower().replace(":", "_").replace("/", "_")


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = (-1, 0)
    if not sep or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard {text!r}: give i/n with 0 <= i < n, e.g. 0/2")
    return shard


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2")
    return seeds


def _open_or_design(args: argparse.Namespace, folder: Path) -> ReferenceSet:
    protocols = tuple(Protocol.parse(spec) for spec in (args.protocol or [""]))
    protocols = tuple(dict.fromkeys(protocols)) or (Protocol(),)
    seeds = _seeds(args.seeds)
    if (folder / SET_FILE).is_file():
        rset = ReferenceSet.load(folder)
        if rset.dataset != args.dataset:
            raise ValueError(f"{folder} holds a set for {rset.dataset!r}, not {args.dataset!r}; "
                             "choose another --out")
        # A reopened set keeps its architectures; new protocols and seeds are added.
        return ReferenceSet(dataset=rset.dataset, members=rset.members,
                            seeds=tuple(dict.fromkeys(rset.seeds + seeds)),
                            protocols=tuple(dict.fromkeys(rset.protocols + protocols))
                            if args.protocol else rset.protocols,
                            design=rset.design)
    if args.pilot:
        return ReferenceSet(dataset=args.dataset, members=pilot_members(), seeds=seeds,
                            protocols=protocols,
                            design={"pilot": True, "latency_table": args.table})
    extras = {}
    for spec in args.extra or []:
        role, sep, path = spec.partition("=")
        if not sep or not role.strip():
            raise ValueError(f"--extra {spec!r}: give ROLE=ARCH.yaml")
        extras[role.strip()] = ArchConfig.from_file(path.strip())
    return design_set(dataset=args.dataset, n=args.n, seed=args.seed, seeds=seeds,
                      protocols=protocols, table=args.table, extras=extras)


def build(args: argparse.Namespace) -> int:
    folder = args.out or HERE / _slug(args.dataset)
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: must be >= 1")
    shard = _shard(args.shard)
    resolve_device(args.device)
    load_dataset(args.dataset, heldout="test")  # fail now on a bad dataset
    rset = _open_or_design(args, folder)
    rset.save(folder)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    print(f"{folder}: {len(rset.members)} architectures x {len(rset.seeds)} seeds x "
          f"{len(rset.protocols)} protocol(s) "
          f"({', '.join(p.protocol_id for p in rset.protocols)})", flush=True)
    n = run_missing(rset, folder, device=args.device, workers=args.workers, shard=shard,
                    limit=args.limit, order=args.order,
                    only=(lambda p: p.member.role in only or p.member.arch_id in only)
                    if only else None,
                    log=lambda line: print(line, flush=True))
    print(f"trained {n} run(s); rows in {folder}", flush=True)
    return 0


def report(args: argparse.Namespace) -> int:
    from . import folder_of
    from .report import write_report

    folder = folder_of(args.set)
    for path in write_report(folder):
        print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return build(args) if args.action == "build" else report(args)
    except (DatasetError, DeviceError, ArchError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
