"""The front, timed here: each front's members and presets measured whole on this machine.

A table's prediction is not the network's time: a 1-minute table of `--calibrate-latency`
is within 10 % for most networks, not all, and a search minimizes the prediction, so it may
favour what the table predicts too fast (on a Zen 5 VM, 3 searches of 30 trials: front
members and the other candidates within 10 % alike, 96 and 95 %, worst -12 and -15 %,
`benchmarks/reports/front_latency`). Where a device's table was timed on this machine (verified here,
or measured here by `--calibrate-latency`: `meta["verification"]` says so), the members and
presets of its front are timed whole at the end of the search, with the table's protocol and
runtime (`latency_tables.trust.time_probes`: fused form, same batch and threads, 2 rounds, min
of medians): a few seconds. The fronts stay those of the table (what the search optimized);
the report, `pareto.csv` and the printed front put the time measured here beside each
prediction, and say where they part by more than `latency_tables.trust.TOLERANCE`.

The table's probes are timed in the same rounds, against their time at build: a machine's
speed moves (a 2-core VM ran the same 90 networks about 5 % slower in the minutes after
each search than 10 minutes after the last, `benchmarks/reports/front_latency`), and the note says by how
much it ran slower or faster than at the table's build while the front was timed.

A table of another machine (a board's table searched on a laptop), a derived table, or one
used unchecked (`--trust-table`) is not timed: this machine would say nothing about it.
The times are stored on the study (`measured_here`), so `search.py show` renders them again.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from .report import collect, fronts, presets_of

__all__ = ["MEASURED_HERE", "timed_here", "time_fronts"]

#: The study's user attribute holding the times: {device: record} (`time_fronts`).
MEASURED_HERE = "measured_here"


def timed_here(table: Any) -> bool:
    """Whether `table` was timed on this machine by this search's check (its probes, or
    its build by `--calibrate-latency`): only then do its networks run here as it claims."""
    from latency_tables import LatencyTable

    if not isinstance(table, LatencyTable) or table.source != "measured":
        return False
    return (table.meta.get("verification") or {}).get("status") in ("verified", "failed")


def time_fronts(study: optuna.Study, tables: Mapping[str, Any], *,
                timer: Callable[[list, Any], list[float]] | None = None,
                say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Time the members and presets of each front whose table `timed_here`, store the times
    on the study (`MEASURED_HERE`) and return them: {device: {"ms": {arch_id: ms per image},
    "probes_vs_build" (median time here / time at build of the table's probes, timed in the
    same rounds; None for a table without build times), "machine", "protocol", "date"}}.
    `timer(archs, table)` (default `trust.time_probes`) is a seam for tests."""
    from latency_tables._device import cpu_model
    from latency_tables.trust import probe_archs, time_probes

    timer = timer or time_probes
    run = study.user_attrs.get("run") or {}
    sources = run.get("sources") or {d: d for d in tables}
    out = dict(study.user_attrs.get(MEASURED_HERE) or {})
    for f in fronts(collect(study), presets_of(study), sources):
        table = tables.get(f.device)
        if table is None or not timed_here(table):
            continue
        archs = list({c.arch_id: c.arch for c in [*f.members, *f.presets] if c.arch}.items())
        if not archs:
            continue
        built = (table.meta.get("probes") or {})
        probes = probe_archs(table) if built.get("measured_ms") else []
        say(f"timing the {len(f.members)} front members and {len(f.presets)} presets on "
            f"{f.device} whole on this machine (the table's protocol"
            + (f", with its {len(probes)} probes" if probes else "") + "; a few seconds)")
        ms = timer([a for _, a in archs] + probes, table)
        proto = table.meta.get("protocol") or {}
        at_build = dict(zip(built.get("arch_ids", []), built.get("measured_ms", [])))
        ratios = [m / at_build[a.arch_id] for a, m in zip(probes, ms[len(archs):])
                  if at_build.get(a.arch_id)]
        out[f.device] = {
            "ms": {i: round(float(m), 4) for (i, _), m in zip(archs, ms)},
            "probes_vs_build": round(statistics.median(ratios), 4) if ratios else None,
            "machine": cpu_model(), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "protocol": (f"{proto.get('runtime', 'eager')}, {proto.get('form', 'fused')} form, "
                         f"batch {proto.get('batch', table.batch)}, {proto.get('threads', 1)} "
                         "thread(s), 2 rounds, min of medians")}
    if out:
        study.set_user_attr(MEASURED_HERE, out)
    return out
