"""Is a measured latency table valid on this machine? A few probe networks, timed here.

A table holds where it was measured (issue 23: a table built on an EPYC slice with 32 MiB of
L3, used on one with 8 MiB because the model strings matched, predicted every network 52-56 %
too fast, silently). So before a search uses a measured table, `verify` times a few fixed
probe networks (`PROBES`: FasterNet-T0 and two others of the default space, a few seconds on
one core) whole, with the table's protocol (`validate.measure_networks`: fused, same batch,
threads and clock, min over rounds of the median), and compares.

What the +-10 % compares. A build times the probes on its own machine and stores them
(sidecar `probes`), beside the table's prediction of each. Here, each probe's time against
its time at build says whether this machine runs them as the table's did; the probes' median
time here against the table's predictions says whether the predictions hold here (the ratio
the search's latencies would be off by, whatever its cause). A table is verified when both
are within `TOLERANCE`: every probe within it of its time at build, and the median within it
of the predictions. One probe that the table itself mispredicts at build (a table is within
+-10 % for most networks, not all: a 1-minute table put its small probe at +12 %) does not
fail it there or anywhere its machine is; a machine that differs in one probe by more does.
A table built before probes were stored has no time at build: there every probe must be
within `TOLERANCE` of the table's prediction. `Verification.summary` names the larger cause
of a failure (how this machine differs, or how far the table is off on its own machine).

Where the check fails, the search refuses
(one line, `refusal`: the ratio, how the machines differ (`fingerprint.compare`) and the
build command for this machine with its duration) unless asked to calibrate: then it measures
this machine's table in a 1-minute budgeted build (`here.calibrate_here`, kept where `auto`
finds it). `calibrated` is the cheaper alternative it replaced, kept for comparison
(`benchmarks/foreign_table.py`): the table rescaled by the probes' median ratio, one factor
for every network; on a Zen 5 EPYC with the shipped Zen 3 table the probes ran x0.53-x0.76
and one factor left 8 % of 51 unseen networks beyond 10 % (worst +17 %; on an earlier seed,
with the previous small probe, 37 % beyond 15 %), the 1-minute build none
(benchmarks/reports/foreign_table/report.md).

Results are cached per table and machine (`cache_dir()`, a JSON file keyed by a hash of the
table's rows and sidecar and of this machine's fingerprint) for `CACHE_HOURS`, so searches
started within the hour do not re-time; `verify(..., again=True)` (`python -m latency_tables
verify NAME --again`) does. The cache expires because a machine's speed moves while its
fingerprint stays: a shared VM ran the same 51 networks x1.05-x1.18 slower an hour later
(foreign_table report at c383f87),
and a VM can move to another host whose CPU reports the same model and caches.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from search_space import PRESETS, ArchConfig

from .fingerprint import compare, local_table_name, machine_fingerprint, table_fingerprint
from .measure import Protocol
from .runtimes import RUNTIMES
from .table import LatencyTable

__all__ = ["PROBES", "PROBE_TIMERS", "TOLERANCE", "BUILD_MINUTES", "CACHE_HOURS", "Probe", "ProbeTimer",
           "another_machine", "elsewhere",
           "TrustError", "Verification", "build_command", "cache_dir", "cached_verification",
           "calibrated", "probe_archs", "record_probes", "refusal", "time_probes", "trust_note",
           "trusted", "unverified", "verify"]

#: The search's promise: a printed latency within +-10 % of what the network runs at here
#: (the share nn-Meter reports, Zhang et al., MobiSys 2021; the shipped table validates at
#: 100 % within it on its own machine).
TOLERANCE = 0.10
#: How long a cached verification stands (hours); the probes take a few seconds to re-time.
CACHE_HOURS = 1.0
#: Rounds over the probes (min over rounds of the medians, as `validate` measures networks):
#: a burst of load hits one round of a probe, not both.
PROBE_ROUNDS = 2
#: The budget of the build a refusal suggests: the 6-minute build's error on unseen networks
#: is in benchmarks/reports/budgeted_build/report.md (`benchmarks/budgeted_build.py`).
BUILD_MINUTES = 6

#: Probe networks: FasterNet-T0 (the paper's), a small ReLU net with 5x5 PConv and large
#: partial ratios, and a wide GELU net with mixed per-stage knobs; 4-25 ms each on one EPYC
#: core, a few seconds together. All in the default space, so the shipped tables cover them,
#: and all inside the sizes the calibration networks span (`validate.calibration_archs`: the
#: small one at the 1.4th percentile by MACs): a probe below them would test how the
#: correction extrapolates, not the machine (the space's smallest corner, which the small
#: probe was until 2026-12-06, runs faster whole than its layers' sum, unlike the bulk).
PROBES: tuple[ArchConfig, ...] = (
    PRESETS["fasternet_t0"],
    ArchConfig(widths=(32, 64, 128, 256), depths=(1, 2, 4, 1), n_divs=(2, 2, 4, 4),
               mlp_ratios=(1.5, 1.5, 1.5, 1.5), kernel_sizes=(5, 5, 5, 5), act="relu",
               feature_dim=1024),
    ArchConfig(widths=(64, 128, 256, 512), depths=(2, 3, 6, 2), n_divs=(4, 8, 8, 16),
               mlp_ratios=(2, 3, 3, 2), kernel_sizes=(3, 5, 3, 3), act="gelu", feature_dim=1280),
)
_PROBE_SEED = 23  # a table of another space or resolution draws its probes from its space

#: Times probe networks whole with a table's protocol: ms per image for each arch.
ProbeTimer = Callable[[Sequence[ArchConfig], LatencyTable], list[float]]


class TrustError(ValueError):
    """A table that cannot be verified here (derived, another runtime, a GPU that is not
    here): the message is one line."""


# ---------------------------------------------------------------------------- timing
def _time_here(archs: Sequence[ArchConfig], table: LatencyTable) -> list[float]:
    from .validate import measure_networks

    proto = Protocol.from_dict(table.meta.get("protocol") or {"target": table.meta.get("target", "cpu"),
                                                              "batch": table.batch})
    if proto.target == "cuda" and not torch.cuda.is_available():
        raise TrustError(f"{table.name}: measured on CUDA ({_machine(table)}); torch sees no "
                         "CUDA device here, so its probes cannot run here")
    threads = torch.get_num_threads()
    try:
        ms = measure_networks(list(archs), proto, table.resolution, PROBE_ROUNDS,
                              num_classes=table.meta.get("num_classes", 1000))
    finally:
        torch.set_num_threads(threads)  # measure_networks sets the table's thread count
    return [m / table.batch for m in ms]


#: The probe timer of each runtime (a table's sidecar `runtime`, default "eager"): the
#: table's protocol names its runtime and deployment form, which `measure_networks` compiles
#: each probe in.
PROBE_TIMERS: dict[str, ProbeTimer] = {name: _time_here for name in RUNTIMES}


def time_probes(archs: Sequence[ArchConfig], table: LatencyTable) -> list[float]:
    """`archs` timed whole here with `table`'s protocol and runtime, ms per image."""
    runtime = _runtime(table)
    if runtime not in PROBE_TIMERS:
        raise TrustError(f"{table.name}: a {runtime} table; probes can be timed here in "
                         f"{', '.join(PROBE_TIMERS)} only (latency_tables.trust.PROBE_TIMERS)")
    return PROBE_TIMERS[runtime](archs, table)


def _runtime(table: LatencyTable) -> str:
    return str(table.meta.get("runtime", "eager"))


def _machine(table: LatencyTable) -> str:
    dev = table.meta.get("device") or {}
    return str(dev.get("gpu_name") or dev.get("cpu_model") or "an unknown machine")


def probe_archs(table: LatencyTable) -> list[ArchConfig]:
    """The table's probes: those its build timed (sidecar `probes`), else the `PROBES` it
    covers, else (a table of another space or resolution) 3 drawn from its space."""
    stored = (table.meta.get("probes") or {}).get("archs")
    if stored:
        return [ArchConfig.from_dict(a, source=f"{table.name} probes") for a in stored]
    archs = [a for a in PROBES if table.covers(a)]
    if archs:
        return archs
    from .validate import _space_of, sample_archs

    drawn = sample_archs(_space_of(table, None), 3, _PROBE_SEED)
    archs = [a for a in drawn if table.covers(a)]
    if not archs:
        raise TrustError(f"{table.name}: covers none of its probe networks")
    return archs


def record_probes(table: LatencyTable, *, timer: ProbeTimer = time_probes,
                  write: bool = True) -> dict[str, Any]:
    """Time the probes on the table's own machine (at the end of `build`) and store them, with
    the table's prediction of each, in the sidecar's `probes`; returns that record."""
    archs = probe_archs(table)
    ms = timer(archs, table)
    record = {"arch_ids": [a.arch_id for a in archs], "archs": [a.to_dict() for a in archs],
              "measured_ms": [round(m, 5) for m in ms],
              "predicted_ms": [round(table.predict(a), 5) for a in archs],
              "rounds": PROBE_ROUNDS, "unit": "ms per image", "date": _now()}
    if write:
        table.store("probes", record, "the probes")
    else:
        table.meta["probes"] = record
    return record


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _age_hours(date: str) -> float:
    """Hours since an ISO date written by `_now` (infinite if unreadable)."""
    try:
        then = _dt.datetime.fromisoformat(date)
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=_dt.timezone.utc)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds() / 3600


# ---------------------------------------------------------------------------- the result
@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe network: the table's prediction, its time here and (tables built with
    probes) its time on the table's machine at build; ms per image."""

    arch_id: str
    predicted_ms: float
    measured_ms: float
    built_ms: float | None = None

    @property
    def ratio(self) -> float:
        """Time here / the table's prediction (1.5: runs 50 % slower than the table says)."""
        return self.measured_ms / self.predicted_ms


@dataclasses.dataclass(frozen=True)
class Verification:
    """The probes of one table timed on this machine, and how this machine differs from the
    table's (`fingerprint.compare`, in words)."""

    table: str
    machine: str                   # the table's machine (CPU model or GPU name)
    probes: tuple[Probe, ...]
    differences: tuple[str, ...]
    date: str
    tolerance: float = TOLERANCE
    cached: bool = False

    @property
    def ratio(self) -> float:
        """Median over the probes of time here / prediction: the calibration factor."""
        return statistics.median(p.ratio for p in self.probes)

    @property
    def worst_pct(self) -> float:
        """The largest |time here / prediction - 1| over the probes, %."""
        return max(abs(p.ratio - 1) for p in self.probes) * 100

    @property
    def machine_worst_pct(self) -> float | None:
        """The largest |time here / time at build - 1| over the probes, % (None for a table
        built without probe times)."""
        if not all(p.built_ms for p in self.probes):
            return None
        return max(abs(p.measured_ms / p.built_ms - 1) for p in self.probes) * 100

    @property
    def verified(self) -> bool:
        """Every probe within `tolerance` of its time at build and the median within it of
        the table's predictions; without times at build, every probe within it of its
        prediction (module doc)."""
        machine = self.machine_worst_pct
        if machine is None:
            return all(abs(p.ratio - 1) <= self.tolerance for p in self.probes)
        return machine <= self.tolerance * 100 and abs(self.ratio - 1) <= self.tolerance

    @property
    def machine_ratio(self) -> float | None:
        """Median of time here / time at build (None for a table built without probes)."""
        pairs = [p.measured_ms / p.built_ms for p in self.probes if p.built_ms]
        return statistics.median(pairs) if pairs else None

    def summary(self) -> str:
        """One phrase: "verified on this machine (3 probes within 4.1 %, 2026-11-27)", or the
        ratio, its spread, and what differs."""
        day = self.date[:10]
        machine = self.machine_worst_pct
        if self.verified and machine is not None:
            return (f"verified on this machine ({len(self.probes)} probes within {machine:.1f} % "
                    f"of their time at build, x{self.ratio:.2f} the table's predictions in the "
                    f"median, worst {self.worst_pct:.1f} %, {day})")
        if self.verified:
            return (f"verified on this machine ({len(self.probes)} probes within "
                    f"{self.worst_pct:.1f} %, {day})")
        tol = f"+-{self.tolerance * 100:.0f} %"
        lo, hi = min(p.ratio for p in self.probes), max(p.ratio for p in self.probes)
        if machine is not None and machine > self.tolerance * 100:  # this machine is not the table's
            at_build = [p.measured_ms / p.built_ms for p in self.probes if p.built_ms]
            differs = ", ".join(self.differences)
            return (f"{len(self.probes)} probe networks ran x{self.ratio:.2f} the table's prediction "
                    f"here (x{lo:.2f}-x{hi:.2f}, {day}); this machine runs them "
                    f"x{self.machine_ratio:.2f} their time at build (x{min(at_build):.2f}-"
                    f"x{max(at_build):.2f}; outside {tol})" + (f" ({differs})" if differs else ""))
        text = (f"{len(self.probes)} probe networks ran x{self.ratio:.2f} the table's prediction "
                f"here (x{lo:.2f}-x{hi:.2f}, {day}; outside {tol})")
        cause = self._cause()
        return text + (f"; {cause}" if cause else "")

    def _cause(self) -> str:
        differs = ", ".join(self.differences)
        m = self.machine_ratio
        if m is None:
            return (f"this machine differs from the table's: {differs}" if differs else
                    "same fingerprint (CPU, ISA, caches, versions): a loaded or throttled "
                    f"machine? re-time with `python -m latency_tables verify {self.table} --again`")
        table_off = self.ratio / m
        if abs(m - 1) >= abs(table_off - 1):
            return (f"this machine runs them x{m:.2f} their time at build"
                    + (f" ({differs})" if differs else ""))
        return (f"the table is off on its own machine too (x{table_off:.2f} at build): "
                "rebuild or recalibrate it")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("cached")
        out.update(ratio=self.ratio, verified=self.verified, worst_pct=self.worst_pct)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, cached: bool = False) -> Verification:
        return cls(table=data["table"], machine=data["machine"],
                   probes=tuple(Probe(**p) for p in data["probes"]),
                   differences=tuple(data["differences"]), date=data["date"],
                   tolerance=data.get("tolerance", TOLERANCE), cached=cached)


# ---------------------------------------------------------------------------- verify, cached
def cache_dir() -> Path:
    """Where verifications are cached: `$PCONV_NAS_VERIFY_CACHE`, default
    `~/.cache/pconv-nas/verify`."""
    return Path(os.environ.get("PCONV_NAS_VERIFY_CACHE",
                               Path.home() / ".cache" / "pconv-nas" / "verify"))


def _cache_path(table: LatencyTable, here: Mapping[str, Any], where: Path | None) -> Path:
    meta = {k: v for k, v in table.meta.items()
            if not k.startswith("_") and k not in ("verification", "calibration")}
    h = hashlib.sha256(table.rows.to_csv(index=False).encode())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(json.dumps(dict(here), sort_keys=True, default=str).encode())
    return (where or cache_dir()) / f"{table.name}-{h.hexdigest()[:16]}.json"


def _check_verifiable(table: LatencyTable) -> None:
    if table.source != "measured":
        raise TrustError(f"{table.name}: a {table.source} table, not measured on a machine; "
                         "nothing to verify (its provenance line says what it is)")
    if table.meta.get("calibration"):
        raise TrustError(f"{table.name}: already calibrated; verify the table as loaded")


def _here(table: LatencyTable) -> dict[str, Any]:
    target = table.meta.get("target", "cpu")
    if target == "cuda" and not torch.cuda.is_available():
        target = "cpu"
    return machine_fingerprint(target, _runtime(table))


def _read(path: Path) -> Verification | None:
    try:
        return Verification.from_dict(json.loads(path.read_text()), cached=True)
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: re-time
        return None


def cached_verification(table: LatencyTable, *, where: Path | None = None) -> Verification | None:
    """This table's verification on this machine if one is cached (no timing), else None."""
    if table.source != "measured" or table.meta.get("calibration"):
        return None
    return _read(_cache_path(table, _here(table), where))


def verify(table: LatencyTable, *, timer: ProbeTimer = time_probes, again: bool = False,
           where: Path | None = None,
           on_timing: Callable[[list[ArchConfig]], None] | None = None) -> Verification:
    """Time the table's probes here (`timer`, a seam for tests) and compare them with its
    predictions; cached per table and machine (`where`, default `cache_dir()`) unless
    `again`. `on_timing(archs)` is called before the probes are timed (not when cached).

    Raises `TrustError` for a table that cannot be verified here (derived; a runtime or a
    GPU this machine cannot time)."""
    _check_verifiable(table)
    here = _here(table)
    path = _cache_path(table, here, where)
    if not again:
        found = _read(path)
        if found is not None and _age_hours(found.date) < CACHE_HOURS:
            return found
    archs = probe_archs(table)
    if on_timing:
        on_timing(archs)
    ms = timer(archs, table)
    stored = table.meta.get("probes") or {}
    built = dict(zip(stored.get("arch_ids", []), stored.get("measured_ms", [])))
    probes = tuple(Probe(arch_id=a.arch_id, predicted_ms=table.predict(a), measured_ms=m,
                         built_ms=built.get(a.arch_id)) for a, m in zip(archs, ms))
    v = Verification(table=table.name, machine=_machine(table), probes=probes,
                     differences=tuple(compare(table_fingerprint(table.meta), here)), date=_now())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(v.to_dict(), indent=2) + "\n")
    except OSError:  # a read-only home: verified anyway, re-timed next time
        pass
    return v


# ---------------------------------------------------------------------------- what the search uses
def _with(table: LatencyTable, **meta: Any) -> LatencyTable:
    return LatencyTable(rows=table.rows, meta={**table.meta, **meta}, name=table.name)


def trusted(table: LatencyTable, v: Verification) -> LatencyTable:
    """The table with its verification recorded (`meta["verification"]`: provenance line,
    run.json)."""
    return _with(table, verification={**v.to_dict(), "status": "verified" if v.verified else "failed"})


def unverified(table: LatencyTable, why: str) -> LatencyTable:
    """The table used without verification (`why`: the switch that asked for it), recorded."""
    return _with(table, verification={"status": "not verified", "why": why})


def another_machine(table: LatencyTable, here: Mapping[str, Any] | None = None) -> str | None:
    """'Cortex-A72 (aarch64)' where `table` was measured on a machine that evidently is not
    this one (another CPU model or architecture, or a GPU this machine lacks): a board's table
    copied to a laptop is that board's table, not a claim about the laptop, so it is used as
    such and labelled, not timed here. None where the table could be this machine's (the
    same model string: the case verification exists for)."""
    fp = table_fingerprint(table.meta)
    target = table.meta.get("target", "cpu")
    if target == "cuda":
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return None if fp.get("gpu_name") in (None, gpu) else f"{fp.get('gpu_name')}"
    here = here or machine_fingerprint("cpu")
    differs = [k for k in ("cpu_model", "machine") if fp.get(k) and fp.get(k) != here.get(k)]
    return f"{fp.get('cpu_model', '?')} ({fp.get('machine', '?')})" if differs else None


def elsewhere(table: LatencyTable, machine: str) -> LatencyTable:
    """The table of another machine (`another_machine`), used as that machine's, recorded."""
    return _with(table, verification={"status": "another machine", "machine": machine})


def calibrated(table: LatencyTable, v: Verification) -> LatencyTable:
    """The table rescaled to this machine by the probes' median ratio: every prediction times
    `v.ratio` (its correction's scale and offset both), labelled as calibrated."""
    return _with(table, verification={**v.to_dict(), "status": "failed"},
                 calibration={"factor": v.ratio, "probes": len(v.probes), "from": v.machine,
                              "probe_ratios": [p.ratio for p in v.probes], "date": v.date})


def trust_note(meta: Mapping[str, Any]) -> str:
    """The phrase a provenance line ends with: calibrated, verified, or not verified here
    ('' for a table the search did not check, e.g. in `describe`)."""
    cal = meta.get("calibration")
    if cal:
        ratios = cal.get("probe_ratios") or [cal["factor"]]
        return (f"calibrated from {cal['from']} by {cal['probes']} probes (x{cal['factor']:.2f}, "
                f"probes x{min(ratios):.2f}-x{max(ratios):.2f}): not measured on this machine, "
                "rescaled by one factor")
    ver = meta.get("verification") or {}
    if ver.get("status") == "another machine":
        return (f"the table of {ver['machine']}, another machine than this one: its latencies are "
                "that machine's (not timed here)")
    if ver.get("status") == "not verified":
        return f"NOT VERIFIED on this machine ({ver.get('why')}): may be off by any amount here"
    if ver.get("status") == "verified":
        instead = meta.get("calibrated_from")
        return Verification.from_dict(ver).summary() + (
            f"; measured here by --calibrate-latency in place of {instead['table']!r} "
            f"(measured on {instead['machine']}, which does not hold here)" if instead else "")
    if ver.get("status") == "failed":
        return f"does NOT hold on this machine: {Verification.from_dict(ver).summary()}"
    return ""


def _local_name(table: LatencyTable) -> str:
    """The name `build` gives a table of `table`'s kind measured here (`-<runtime>` for a
    runtime other than eager, as `build` names one)."""
    target = table.meta.get("target", "cpu")
    runtime = _runtime(table)
    return local_table_name(target if target != "cuda" or torch.cuda.is_available() else "cpu") + (
        "" if runtime == "eager" else f"-{runtime}")


def build_command(table: LatencyTable, space: str | None = None) -> str:
    """The budgeted build that measures this machine with `table`'s protocol, under a name
    `auto` prefers here (`fingerprint.local_table_name`)."""
    protocol = "".join(f" --{k} {table.meta[k]}" for k in ("target", "batch", "threads")
                       if table.meta.get(k) is not None)
    where = f" --space {space}" if space else ""
    if _runtime(table) != "eager":
        where += f" --runtime {_runtime(table)}"
    return (f"python -m latency_tables build --device {_local_name(table)} "
            f"--budget-minutes {BUILD_MINUTES}{where}{protocol}")


def refusal(table: LatencyTable, v: Verification, space: str | None = None) -> str:
    """One line: why the table does not hold here, and the two ways on (a build of this
    machine, with its duration: the budget and a minute of probes and refit; or calibration)."""
    from .here import CALIBRATE_MINUTES

    return (f"latency table {table.name!r} (measured on {v.machine}) does not hold on this machine: "
            f"{v.summary()}; measure this machine with `{build_command(table, space)}` (about "
            f"{BUILD_MINUTES + 1} min; then --device {_local_name(table)}, or auto, uses it), or "
            f"let the search measure one in {CALIBRATE_MINUTES:g} min with --calibrate-latency")
