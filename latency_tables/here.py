"""A table of this machine, whole: what `python -m latency_tables build` does, as a function.

`build_here` runs the steps in order: one round over the calibration networks; the layers
(`build.build_table`: every one, or a space-filling sample and per-kind regressors); the
second round over the calibration networks, and the table's correction fitted on them (min
of the two rounds: they bracket the layers' sweeps); the probe networks timed and stored
(what `verify` compares with on another machine). A budget holds all of it but the probes.
The CLI's `build` and the search's `--calibrate-latency` (a short build of this machine
where a shipped table does not hold) both call it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_space import SearchSpace

from .budget import budget_note
from .build import build_table, check_budget
from .layers import space_layers
from .measure import Protocol
from .table import LatencyTable
from .trust import PROBE_ROUNDS, TrustError, record_probes
from .validate import _space_of, calibrate, calibration_archs, correction_note, measure_networks

__all__ = ["CALIBRATE_MINUTES", "build_here", "calibrate_here"]

#: `progress(phase, done, total)`: phase is "calibration networks", "layers" or "calibrate".
Progress = Callable[[str, int, int], None]


def build_here(name: str, space: SearchSpace | None = None, *, proto: Protocol,
               out_dir: str | Path, resolution: int = 224, budget_minutes: float = 0,
               sweeps: int = 2, calibrate_n: int = 10, calib_seed: int = 1000,
               sample_seed: int = 0, form_choice: dict[str, Any] | None = None,
               progress: Progress | None = None,
               say: Callable[[str], None] = print) -> LatencyTable:
    """Measure `name` on this machine into `out_dir` and return it (module doc). `budget_minutes`
    0 measures every layer; otherwise the calibration networks and layers fit in it. `say`
    receives the lines the CLI prints. Raises ValueError (one line) on bad input, before any
    timing."""
    space = space or SearchSpace.default()
    if budget_minutes < 0:
        raise ValueError(f"--budget-minutes: {budget_minutes} must be >= 0 (0: every layer)")
    if calibrate_n == 1 or calibrate_n < 0:
        raise ValueError(f"--calibrate: {calibrate_n} networks; the correction (scale and offset) "
                         "needs at least 2 (0: no correction)")

    def phase(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total, *_: progress(name, done, total)) if progress else None

    t0 = time.monotonic()
    budget_s = budget_minutes * 60 if budget_minutes else None
    if budget_s:
        check_budget(budget_s, space_layers(space, resolution), proto, networks=2 * calibrate_n)
    # The calibration networks' two rounds bracket the layers (one before, one after), as the
    # layers' sweeps span the build: each side's min-of-rounds then sees the same stretch of a
    # machine whose speed moves by several percent over minutes (a 2-min build whose networks
    # were timed first had its probes at build +11 % off: foreign_table report at 9d94b72).
    archs = calibration_archs(space, calibrate_n, calib_seed, resolution) if calibrate_n else []
    first = measure_networks(archs, proto, resolution, rounds=1, progress=phase("calibration networks"))
    if budget_s:  # the budget holds both rounds: the second takes about as long as the first
        budget_s -= 2 * (time.monotonic() - t0)
    path = build_table(name, space, resolution=resolution, proto=proto, sweeps=sweeps,
                       out_dir=out_dir, progress=phase("layers"), budget_s=budget_s,
                       seed=sample_seed, form_choice=form_choice)
    second = measure_networks(archs, proto, resolution, rounds=1, progress=phase("calibrate"))
    table = LatencyTable.load(path)
    say(f"wrote {path} and {path.with_suffix('.json').name} in {(time.monotonic() - t0) / 60:.1f} min")
    if budget_note(table.meta):
        say(budget_note(table.meta))
    if calibrate_n:
        timed = {a.arch_id: min(x, y) for a, x, y in zip(archs, first, second)}
        corr = calibrate(table, n=calibrate_n, seed=calib_seed, space=space, timed=timed)
        say(correction_note(corr))
    try:
        probes = record_probes(table)  # what `verify` compares with on another machine
    except TrustError as e:  # e.g. a runtime whose probes cannot be timed here yet
        say(f"no probes recorded ({e}); `verify` compares with the table's predictions only")
        return LatencyTable.load(path)
    say(f"probes (timed whole, {PROBE_ROUNDS} rounds; `verify` re-times them elsewhere): "
        + ", ".join(f"{i} {m:.2f} ms" for i, m in zip(probes["arch_ids"], probes["measured_ms"])))
    return LatencyTable.load(path)


#: The build `--calibrate-latency` runs where a measured table does not hold here: on a 2-core
#: AMD EPYC (Zen 5) where the shipped `amd-epyc` table (Zen 3) predicted 51 unseen networks
#: 40 % too slow, a 1-minute build of this machine had MAPE 2.1 % (100 % within 10 %), the
#: probes' one factor 5.0 % (92 %) (benchmarks/reports/foreign_table/report.md).
CALIBRATE_MINUTES = 1.0


def calibrate_here(table: LatencyTable, v: Any, space: SearchSpace | None = None, *,
                   minutes: float = CALIBRATE_MINUTES, out_dir: str | Path | None = None,
                   say: Callable[[str], None] = print,
                   progress: Progress | None = None) -> LatencyTable:
    """This machine's table in place of `table` (measured elsewhere; `v`, its failed
    `trust.Verification` here): a `minutes` budgeted build of the same space, protocol,
    runtime and form, written under this machine's name (`fingerprint.local_table_name`) in
    `out_dir` (default `table.user_dir()`, where `auto` finds it), or that table where an
    earlier calibration wrote it. Returned with its probes re-timed here (a table that misses
    them is used, said so in a warning and in every provenance line), and
    `meta["calibrated_from"]` naming the table it replaces."""
    from ._device import last_level_cache_bytes
    from .table import user_dir
    from .trust import _local_name, build_command, trusted, verify

    out = Path(out_dir) if out_dir is not None else user_dir()
    name = _local_name(table)
    space = _space_of(table, space)
    sigs = space_layers(space, table.resolution)
    path = out / f"{name}.csv"
    here = LatencyTable.load(path) if path.exists() and path.with_suffix(".json").exists() else None
    same = here is not None and here.batch == table.batch and here.meta.get(
        "runtime", "eager") == table.meta.get("runtime", "eager")
    if not same or not set(s.key for s in sigs) <= set(here.rows["key"]):
        stored = Protocol.from_dict(table.meta.get("protocol") or {"batch": table.batch})
        proto = dataclasses.replace(stored, context_bytes=last_level_cache_bytes()
                                    if stored.target == "cpu" else 0)
        say(f"--calibrate-latency: measuring this machine's table {name!r} in {minutes:g} min "
            f"(a budgeted build; {table.name!r}: {v.summary()})")
        here = build_here(name, space, proto=proto, out_dir=out, resolution=table.resolution,
                          budget_minutes=minutes, progress=progress, say=say)
    else:
        say(f"--calibrate-latency: this machine's table {name!r} ({path}) in place of {table.name!r}")
    check = verify(here)
    if not check.verified:  # the machine moved since the build, or the table is off in the median
        say(f"WARNING: this machine's {minutes:g}-min table {name!r} does not verify here: "
            f"{check.summary()}; every latency says so; a longer build is closer: "
            f"`{build_command(table)}`")
    here = trusted(here, check)
    here.meta["calibrated_from"] = {"table": table.name, "machine": v.machine, "why": v.summary(),
                                    "minutes": minutes}
    return here
