"""Build a latency table: time every distinct layer of a search space on this machine.

Rows are appended to `<name>.partial.csv` as they are measured, so an interrupted build
resumes where it stopped (the protocol is stored next to it in `<name>.partial.json`; a
resume with a different protocol is refused). Each layer is measured in `sweeps` passes
over the whole layer list: on a shared machine a burst of load hits one sweep of a layer,
not all of them, and the table keeps the least disturbed sweep (the minimum over sweeps of
the per-sweep median). When done, `<name>.csv` (one row per layer) and `<name>.json` (the
device and protocol) are written and the partial files removed.

The sidecar records the runtime the layers ran in (`runtime`, `runtime_version`: eager PyTorch
and the torch version by default) and the deployment form they were built in (`form`, and with
`form_choice` the measurement that chose it: `deploy.choose_form`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from search_space import SearchSpace
from search_space.forms import deploy_form

from ._device import describe_device
from .fingerprint import machine_fingerprint
from .layers import LAYER_KEY_VERSION, LayerSig, make_layer, space_layers
from .measure import Protocol, Timing, time_layer
from .runtimes import get_runtime
from .sample import required_head, sample_order

__all__ = ["build_table", "aggregate_sweeps", "merge_builds", "TABLE_COLUMNS", "BudgetTooSmall",
           "check_budget"]

_SIG_COLUMNS = ["key", "kind", "res", "cin", "cout", "stride", "n_div", "mlp_ratio",
                "kernel_size", "act", "num_classes"]
_PARTIAL_COLUMNS = _SIG_COLUMNS + ["sweep", "median_ms", "iqr_ms", "p10_ms", "repeats", "copies",
                                   "seconds"]
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
    defaults = {"runtime": "eager", "form": "fused"}  # builds from before the two fields
    for m in metas[1:]:
        a = {**defaults, **{k: v for k, v in metas[0]["protocol"].items() if k != "sweeps"}}
        b = {**defaults, **{k: v for k, v in m["protocol"].items() if k != "sweeps"}}
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


class BudgetTooSmall(ValueError):
    """A budget that cannot measure the rows every kind's regressor needs."""


def check_budget(budget_s: float, sigs: list[LayerSig], proto: Protocol, networks: int = 0) -> None:
    """Raise `BudgetTooSmall` where `budget_s` (seconds) is below the protocol's least time for
    the layers every kind's regressor needs (`min_time_s` each, plus the runtime's least export
    time per row) and `networks` network timings."""
    layers = sum(required_head(sigs).values())
    floor = ((layers + networks) * max(proto.min_time_s, 0.01)  # 10 ms: a layer's least setup
             + layers * get_runtime(proto.runtime).row_export_s)
    if budget_s < floor:
        raise BudgetTooSmall(f"--budget-minutes: {budget_s / 60:.2f} min cannot measure the {layers} "
                             f"layers every kind's regressor needs and {networks} calibration "
                             f"timings (at least {floor / 60:.1f} min with this protocol)")


def _read_partial(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    df = pd.read_csv(path)
    return set(zip(df["key"], df["sweep"].astype(int)))


def _measure(sig: LayerSig, proto: Protocol) -> Timing:
    module, x = make_layer(sig, proto.batch, proto.form)
    return time_layer(module, x, proto, chain=sig.kind == "block")


def _noisiest_first(partial: Path, sigs: list[LayerSig]) -> list[LayerSig]:
    """`sigs` by the spread (IQR, ms) of their first measurement, largest first: the rows
    whose one sweep most likely caught a disturbance, weighted by their time. (Chosen on design
    data, the one-sweep 6-min and 2-sweep tables of `benchmarks/budgeted_build.py` on an AMD
    EPYC VM, 2026-12-05: the 400 rows of largest IQR held 68 % of the one-sweep excess over
    the 2-sweep rows, the 400 slowest 59 %; judged afterwards by a fresh build.)"""
    iqr = pd.read_csv(partial).groupby("key")["iqr_ms"].max()
    return sorted(sigs, key=lambda s: -float(iqr.get(s.key, 0.0)))


def build_table(name: str, space: SearchSpace | None = None, *, resolution: int = 224,
                proto: Protocol | None = None, sweeps: int = 2, out_dir: str | Path,
                layers: list[LayerSig] | None = None, in_chans: int = 3, num_classes: int = 1000,
                progress: Callable[[int, int, str], None] | None = None,
                budget_s: float | None = None, seed: int = 0,
                clock: Callable[[], float] = time.monotonic,
                timer: Callable[[LayerSig, Protocol], Timing] = _measure,
                form_choice: dict[str, Any] | None = None) -> Path:
    """Measure every layer of `space` (or the given `layers`) and write `<out_dir>/<name>.csv`.

    With `budget_s` (seconds), the build measures layers in the space-filling order of
    `sample.sample_order` (seeded by `seed`) and stops before a layer would end past the
    budget (the mean time per layer so far is its estimate); the layers it did not measure are
    predicted by per-kind regressors (`budget.write_budgeted_table`). The measured rows stay
    in `<name>.partial.csv`, so the same command again measures more and refits. Raises
    `BudgetTooSmall` (naming the minimum) when the budget cannot measure the rows every kind's
    regressor needs. `clock` and `timer` are seams for tests (a fake clock, a fake layer).

    Args:
        name: table name (file stem).
        space: the search space (default: `SearchSpace.default()`).
        resolution: input image size (pixels, square).
        proto: measurement protocol (batch, threads, repeats, cache context).
        sweeps: passes over the layer list (>= 1); see the module docstring.
        out_dir: directory of the table files.
        progress: called as `progress(done, total, key)` after each measurement.
        form_choice: how `proto.form` was chosen (`deploy.FormChoice.to_dict()`), for the sidecar.

    Returns the path of the CSV.
    """
    proto = proto or Protocol()
    get_runtime(proto.runtime).require()  # one line naming the pip command, before any timing
    deploy_form(proto.form)
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
        # a partial written before the protocol had a field compares with that field's default
        old["protocol"] = Protocol.from_dict(old.get("protocol", {})).to_dict()
        stored_choice = old.pop("form_choice", None)
        form_choice = form_choice or stored_choice
        if old != meta:
            raise ValueError(f"{partial}: an interrupted build with another protocol exists "
                             f"({old}); delete {partial} and {partial_meta} or pick another name")
    else:  # the form's measurement is kept with it, for the table of a resumed build
        partial_meta.write_text(json.dumps({**meta, **({"form_choice": form_choice} if form_choice
                                                       else {})}, indent=2) + "\n")
    done = _read_partial(partial)
    order = sample_order(sigs, seed) if budget_s is not None else sigs
    total = len(sigs) * sweeps
    count = sum(1 for key, sweep in done if sweep < sweeps)
    start, spent, timed = clock(), 0.0, 0
    if budget_s is not None:
        check_budget(budget_s, sigs, proto)
    if proto.target == "cpu":
        torch.set_num_threads(proto.threads)
    new_file = not partial.exists()
    out_of_time = False
    with partial.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_PARTIAL_COLUMNS)
        if new_file:
            writer.writeheader()
        for sweep in range(sweeps):
            if out_of_time:
                break
            if sweep and budget_s is not None:  # a budget left after one sweep: the noisiest
                order = _noisiest_first(partial, sigs)  # layers again
            for sig in order:
                if (sig.key, sweep) in done:
                    continue
                if budget_s is not None and timed and (clock() - start) + spent / timed > budget_s:
                    out_of_time = True
                    break
                t0 = clock()
                t = timer(sig, proto)
                seconds = clock() - t0
                spent, timed = spent + seconds, timed + 1
                writer.writerow({**sig.to_row(), "sweep": sweep, "median_ms": t.median_ms,
                                 "iqr_ms": t.iqr_ms, "p10_ms": t.p10_ms, "repeats": t.repeats,
                                 "copies": t.copies, "seconds": round(seconds, 4)})
                f.flush()
                count += 1
                if progress:
                    progress(count, total, sig.key)
    partial_rows = pd.read_csv(partial)
    table = aggregate_sweeps(partial_rows)
    table = table[table["key"].isin({s.key for s in sigs})]
    csv_path = out_dir / f"{name}.csv"
    complete = len(table) == len(sigs)
    if complete:
        table.to_csv(csv_path, index=False, float_format="%.5g")
    runtime = get_runtime(proto.runtime)
    sidecar = {
        "layer_key_version": LAYER_KEY_VERSION,
        "name": name, "source": "measured", "device": describe_device(proto.target),
        "fingerprint": machine_fingerprint(proto.target),  # what `trust.verify` compares
        "target": proto.target, "batch": proto.batch, "threads": proto.threads,
        "resolution": resolution, "in_chans": in_chans, "num_classes": num_classes,
        "protocol": {**proto.to_dict(), "clock": proto.resolved_clock, "sweeps": sweeps,
                     "statistic": "min over sweeps of the per-sweep median (ms per batch)",
                     "context": "blocks timed in a chain of distinct copies, other layers "
                                "rotating over distinct copies and inputs (latency_tables.measure)"},
        "space": space.source, "layers": len(table),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "correction": None,
        "runtime": runtime.name, "runtime_version": runtime.version(), "form": proto.form,
    }
    if form_choice:
        sidecar["form_choice"] = form_choice
    if not complete:  # a budgeted build: predict the rest, keep the partial files to extend
        from .budget import write_budgeted_table

        return write_budgeted_table(csv_path, table, sigs, sidecar, budget_s=budget_s,
                                    seconds=spent, elapsed_s=clock() - start)
    if budget_s is not None:  # every layer measured within the budget; some of them again
        again = int((partial_rows.groupby("key")["sweep"].nunique() >= min(sweeps, 2)).sum())
        sidecar["budget"] = {"budget_s": budget_s, "elapsed_s": round(clock() - start, 1),
                             "measuring_s": round(spent, 1), "measured": len(table),
                             "layers": len(sigs), "measured_pct": 100.0, "repeated": again,
                             "sweeps": sweeps, "repeated_order": "largest spread first"}
    (out_dir / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    partial.unlink()
    partial_meta.unlink()
    return csv_path
