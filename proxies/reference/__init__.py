"""Ground truth for the accuracy axis: reference sets of architectures x seeds trained to a
complete schedule (`Protocol`), committed as data, and the tools that build and report them.

    from proxies import reference
    runs = reference.load("fashion-mnist")      # one row per finished training run
    python -m proxies reference build --n 40 --seeds 0,1,2 --device cuda
    python -m proxies reference report

The committed sets live in this folder, one subfolder per dataset (``fashion-mnist/``:
``set.json`` + ``runs*.jsonl``); ``pilot/`` holds the measurements the protocol was chosen
from. See `proxies.reference.protocol` for the recipe and `proxies.reference.build` for
how a set is drawn, trained, sharded and resumed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .build import (
    SET_FILE,
    Member,
    ReferenceSet,
    RunPlan,
    design_set,
    members_frame,
    pilot_members,
    read_runs,
    run_missing,
)
from .protocol import Protocol

__all__ = ["HERE", "Member", "Protocol", "ReferenceSet", "RunPlan", "SET_FILE", "design_set",
           "folder_of", "load", "members_frame", "pilot_members", "read_runs", "run_missing"]

#: The committed sets: ``HERE / <dataset>``.
HERE = Path(__file__).parent


def folder_of(name: str | Path) -> Path:
    """A committed set by dataset name (``fashion-mnist``), or a folder path as it is."""
    path = Path(name)
    if (path / SET_FILE).is_file():
        return path
    slug = str(name).strip().lower().replace(":", "_").replace("/", "_")
    if (HERE / slug / SET_FILE).is_file():
        return HERE / slug
    known = sorted(p.parent.name for p in HERE.glob(f"*/{SET_FILE}"))
    raise FileNotFoundError(f"no reference set {str(name)!r}: give a folder holding {SET_FILE} "
                            f"or one of {', '.join(known) or '(none committed)'}")


def load(name: str | Path = "fashion-mnist", *, finished_only: bool = True) -> pd.DataFrame:
    """The runs of a reference set joined with its members: one row per (protocol,
    architecture, seed) with accuracy (fraction), seconds, device, split (tune/holdout),
    role, stratum, params_m, flops_g and predicted latency on the set's design table."""
    folder = folder_of(name)
    rset = ReferenceSet.load(folder)
    runs = read_runs(folder)
    members = members_frame(rset)
    if runs.empty:
        return members.iloc[0:0]
    if finished_only:
        runs = runs[runs["status"] == "ok"]
    return runs.drop(columns=["role"], errors="ignore").merge(members, on="arch_id", how="inner")
