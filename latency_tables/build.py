"""Build a latency table: time every distinct layer of a search space on this machine.

Rows are appended to `<name>.partial.csv` as they are measured, so an interrupted build
resumes where it stopped (the protocol is stored next to it in `<name>.partial.json`; a
resume with a different protocol is refused). Each layer is measured in `sweeps` passes
over the whole layer list: on a shared machine a burst of load hits one sweep of a layer,
not all of them, and the table keeps the least disturbed sweep (the minimum over sweeps of
the per-sweep median). When done, `<name>.csv` (one row per layer) and `<name>.json` (the
device and protocol) are written and the partial files removed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from search_space import SearchSpace

from ._device import describe_device
from .layers import LAYER_KEY_VERSION, LayerSig, make_layer, space_layers
from .measure import Protocol, time_layer

__all__ = ["build_table", "aggregate_sweeps", "merge_builds", "TABLE_COLUMNS"]

_SIG_COLUMNS = ["key", "kind", "res", "cin", "cout", "stride", "n_div", "mlp_ratio",
                "kernel_size", "act", "num_classes"]
_PARTIAL_COLUMNS = _SIG_COLUMNS + ["sweep", "median_ms", "iqr_ms", "p10_ms", "repeats", "copies"]
#: Columns of a table CSV; `ms` is the statistic prediction uses (ms per batch).
TABLE_COLUMNS = _SIG_COLUMNS + ["ms", "iqr_ms", "p10_ms", "sweep_spread_pct", "repeats", "copies"]


def aggregate_sweeps(partial: pd.DataFrame) -> pd.DataFrame:
    """One row per layer from per-sweep rows: `ms` = min over sweeps of the sweep medians."""
    g = partial.groupby("key", sort=False)
    first = g[_SIG_COLUMNS].first()
    med = g["median_ms"]
    out = first.assign(
        ms=med.min(), iqr_ms=g["iqr_ms"].median(), p10_ms=g["p10_ms"].min(),
        sweep_spread_pct=(med.max() / med.min() - 1) * 100, repeats=g["repeats"].sum(),
        copies=g["copies"].max())
    return out.reset_index(drop=True)[TABLE_COLUMNS]


def merge_builds(paths: list[str | Path], out: str | Path) -> Path:
    """Merge builds of one table (same protocol) into `out`: per layer, the least disturbed
    build (min of `ms`), as if its sweeps had been one build's. The sidecar of the first
    build is kept, with `sweeps` summed and the merged builds listed."""
    if len(paths) < 2:
        raise ValueError("merge_builds: needs at least two builds")
    metas = [json.loads(Path(p).with_suffix(".json").read_text()) for p in paths]
    for m in metas[1:]:
        a = {k: v for k, v in metas[0]["protocol"].items() if k != "sweeps"}
        b = {k: v for k, v in m["protocol"].items() if k != "sweeps"}
        if a != b or m["resolution"] != metas[0]["resolution"]:
            raise ValueError("merge_builds: builds differ in protocol or resolution")
    rows = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    g = rows.groupby("key", sort=False)
    best = rows.loc[g["ms"].idxmin()].set_index("key")
    best["sweep_spread_pct"] = (g["ms"].max() / g["ms"].min() - 1) * 100
    best["repeats"] = g["repeats"].sum()
    merged = best.reset_index()[TABLE_COLUMNS]
    out = Path(out)
    merged.to_csv(out, index=False, float_format="%.5g")
    meta = dict(metas[0])
    meta["protocol"] = {**meta["protocol"], "sweeps": sum(m["protocol"]["sweeps"] for m in metas)}
    meta["merged_builds"] = [m["date"] for m in metas]
    meta["layers"] = len(merged)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _read_partial(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    df = pd.read_csv(path)
    return set(zip(df["key"], df["sweep"].astype(int)))


def build_table(name: str, space: SearchSpace | None = None, *, resolution: int = 224,
                proto: Protocol | None = None, sweeps: int = 2, out_dir: str | Path,
                layers: list[LayerSig] | None = None, in_chans: int = 3, num_classes: int = 1000,
                progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Measure every layer of `space` (or the given `layers`) and write `<out_dir>/<name>.csv`.

    Args:
        name: table name (file stem).
        space: the search space (default: `SearchSpace.default()`).
        resolution: input image size (pixels, square).
        proto: measurement protocol (batch, threads, repeats, cache context).
        sweeps: passes over the layer list (>= 1); see the module docstring.
        out_dir: directory of the table files.
        progress: called as `progress(done, total, key)` after each measurement.

    Returns the path of the CSV.
    """
    proto = proto or Protocol()
    if sweeps < 1:
        raise ValueError(f"sweeps: {sweeps} must be >= 1")
    space = space or SearchSpace.default()
    sigs = layers if layers is not None else space_layers(space, resolution, in_chans, num_classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial, partial_meta = out_dir / f"{name}.partial.csv", out_dir / f"{name}.partial.json"
    meta: dict[str, Any] = {"resolution": resolution, "protocol": proto.to_dict(), "sweeps": sweeps,
                            "space": space.source}
    if partial_meta.exists():
        old = json.loads(partial_meta.read_text())
        if old != meta:
            raise ValueError(f"{partial}: an interrupted build with another protocol exists "
                             f"({old}); delete {partial} and {partial_meta} or pick another name")
    else:
        partial_meta.write_text(json.dumps(meta, indent=2) + "\n")
    done = _read_partial(partial)
    todo = [(s, sweep) for sweep in range(sweeps) for s in sigs if (s.key, sweep) not in done]
    total, count = len(sigs) * sweeps, len(sigs) * sweeps - len(todo)
    if proto.target == "cpu":
        torch.set_num_threads(proto.threads)
    new_file = not partial.exists()
    with partial.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_PARTIAL_COLUMNS)
        if new_file:
            writer.writeheader()
        for sig, sweep in todo:
            module, x = make_layer(sig, proto.batch)
            t = time_layer(module, x, proto, chain=sig.kind == "block")
            writer.writerow({**sig.to_row(), "sweep": sweep, "median_ms": t.median_ms,
                             "iqr_ms": t.iqr_ms, "p10_ms": t.p10_ms, "repeats": t.repeats,
                             "copies": t.copies})
            f.flush()
            count += 1
            if progress:
                progress(count, total, sig.key)
    table = aggregate_sweeps(pd.read_csv(partial))
    table = table[table["key"].isin({s.key for s in sigs})]
    csv_path = out_dir / f"{name}.csv"
    table.to_csv(csv_path, index=False, float_format="%.5g")
    sidecar = {
        "layer_key_version": LAYER_KEY_VERSION,
        "name": name, "source": "measured", "device": describe_device(proto.target),
        "target": proto.target, "batch": proto.batch, "threads": proto.threads,
        "resolution": resolution, "in_chans": in_chans, "num_classes": num_classes,
        "protocol": {**proto.to_dict(), "clock": proto.resolved_clock, "sweeps": sweeps,
                     "statistic": "min over sweeps of the per-sweep median (ms per batch)",
                     "context": "blocks timed in a chain of distinct copies, other layers "
                                "rotating over distinct copies and inputs (latency_tables.measure)"},
        "space": space.source, "layers": len(table),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "correction": None,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    partial.unlink()
    partial_meta.unlink()
    return csv_path
