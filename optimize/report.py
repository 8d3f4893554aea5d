"""Compute, then draw: candidates and Pareto fronts from a study, then the run folder files.

`collect(study)` turns trials into `Candidate` records; `fronts(...)` computes one
2-D front (accuracy vs latency) per device, over distinct architectures: a repeated proposal
(`duplicate_of`) stays a row of `trials.csv`, but the front, `pareto.csv`, `report.md` and
`pareto.png` show each architecture once, with how often it was proposed (`proposed`, "x3" in
the plot). An architecture promoted to longer budgets (`optimize.promote`) counts with the
result of the highest rung it reached; every row says its `fidelity` (a marker per rung in
the plot), and `rung_costs` gives the seconds spent per rung. `write_outputs` renders `trials.csv`,
`pareto.csv`, `pareto.png`, `report.md`, `archs/<arch_id>.yaml` and `run.json` from the
study alone (its user attributes hold the run description and the scored presets), so
`python search.py show RUN` regenerates everything but `study.db`.

Uncertainty: a proxy accuracy is measured on a sample of validation images, so it carries a
sampling error (`accuracy_error`: the binomial standard error for the budget's `val_size`; a
lower bound, since seed-to-seed training noise adds to it). Front members whose accuracy is
within 1.96 standard errors of the difference from the front's most accurate member are
marked `tie` in `pareto.csv` and `report.md` (`ties_with_best`): the data cannot tell them
apart, and the fastest of them is as accurate as the estimate can say.

The plot says the same (`plot_data` computes what `pareto.png` draws): each member and preset
with its ± (95 %) as an error bar, the members that tie with the best hollow, and where a
committed reference set (`proxies.reference`) trained a member or preset under the protocol
the run's estimate predicts, its ground truth (`reference_truth`: the mean over its seeds) as
a star above or below the estimate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import textwrap
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from search_space import ArchConfig

from .objective import (
    ACCURACY_SE,
    DUPLICATE,
    FIDELITY,
    INFEASIBLE,
    INTERRUPTED,
    PROMOTED_FROM,
    RUNG,
    STOPPED,
    SURPLUS,
)

__all__ = ["Candidate", "Front", "GroundTruth", "PlotData", "PlotPoint", "RungCost", "collect",
           "presets_of", "fronts", "rung_costs", "pareto_mask", "dominates", "hypervolume",
           "write_outputs", "accuracy_error", "ties_with_best", "tie_note", "plot_data",
           "reference_truth", "estimated_protocol"]

#: Two accuracies whose difference is within this many standard errors are a tie (95 %).
TIE_Z = 1.96


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One evaluated architecture (a trial, or a preset scored the same way)."""

    name: str                      # "trial 12" or the preset name
    number: int | None
    state: str                     # complete / stopped_early / infeasible / failed / running
    arch: ArchConfig | None
    accuracy: float | None
    latency_ms: Mapping[str, float]
    params_m: float | None
    reason: str = ""
    proxy_seconds: float | None = None
    started: str = ""
    finished: str = ""
    duplicate_of: int | None = None  # the trial that evaluated this architecture before
    proposed: int = 1              # trials of the study that proposed this architecture
    rung: int = 0                  # 0: the search's budget; k: promoted k rungs (`promote`)
    fidelity: str = ""             # the rung's budget as named (quick, full, key=value,...)
    promoted_from: int | None = None  # a promotion: the trial that proposed the architecture
    accuracy_se: float | None = None  # the proxy's own standard error (None: binomial)

    @property
    def arch_id(self) -> str:
        return self.arch.arch_id if self.arch else ""


class GroundTruth(NamedTuple):
    """An architecture's accuracy under a reference protocol (`proxies.reference`)."""

    accuracy: float                # mean over its seeds (fraction)
    seeds: int                     # trainings averaged
    protocol: str                  # protocol id, e.g. e10-b256-lr0.0005-r32
    sets: tuple[str, ...]          # the reference sets holding them


@dataclasses.dataclass(frozen=True)
class Front:
    """The accuracy/latency front on one device."""

    device: str
    source: str                    # the table's provenance line
    members: list[Candidate]       # sorted by latency
    others: list[Candidate]        # evaluated but dominated
    presets: list[Candidate]
    accuracy_source: str = ""      # what the accuracy is (run.json's accuracy_source)
    truth: Mapping[str, GroundTruth] = dataclasses.field(default_factory=dict)  # by arch_id
    measured: Mapping[str, float] = dataclasses.field(default_factory=dict)  # ms here, by arch_id
    measured_how: str = ""         # where and how `measured` was timed (`optimize.measured`)

    def measured_note(self) -> str:
        """One sentence on the times measured here: where, how, and how far the table's
        predictions of them are (worst, and how many beyond +-10 %); "" if none."""
        pts = [(c, self.measured[c.arch_id]) for c in [*self.members, *self.presets]
               if c.arch_id in self.measured and self.device in c.latency_ms]
        if not pts:
            return ""
        err = [(c.latency_ms[self.device] / ms - 1) * 100 for c, ms in pts]
        worst = max(range(len(err)), key=lambda i: abs(err[i]))
        beyond = [c.name for c, e in zip([c for c, _ in pts], err) if abs(e) > 10]
        return (f"Measured here: the {len(pts)} members and presets timed whole {self.measured_how}; "
                f"the table's predictions of them are {statistics.mean(abs(e) for e in err):.1f} % "
                f"off on average, worst {err[worst]:+.1f} % ({pts[worst][0].name})"
                + (f"; beyond +-10 %: {', '.join(beyond)}" if beyond else "; all within +-10 %")
                + ".")


def _state(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "infeasible" if INFEASIBLE in t.user_attrs else (
            "stopped_early" if STOPPED in t.user_attrs else
            "surplus" if SURPLUS in t.user_attrs else "pruned")
    return t.state.name.lower()


def collect(study: optuna.Study) -> list[Candidate]:
    """Every trial of the study as a Candidate (architecture rebuilt from its user attrs).

    `proposed` counts the trials that proposed the same architecture, its repeats included; a
    trial cut off by an interruption is not one (its candidate was re-queued, and counts once),
    nor is a promotion. A proposal's `fidelity` is the search's budget (the run's `fidelity`).
    """
    trials = study.get_trials(deepcopy=False)
    base = str((study.user_attrs.get("run") or {}).get("fidelity", ""))
    proposed = Counter(t.user_attrs["arch_id"] for t in trials if "arch_id" in t.user_attrs
                       and INTERRUPTED not in t.user_attrs and RUNG not in t.user_attrs)
    out = []
    for t in trials:
        ua = t.user_attrs
        arch = ArchConfig.from_dict(ua["arch"]) if "arch" in ua else None
        reason = str(ua.get("fail_reason") or ua.get(INFEASIBLE) or "")
        acc = ua.get("accuracy")
        if acc is None and t.state == TrialState.COMPLETE and t.values and len(t.values) > 1:
            acc = t.values[0]
        out.append(Candidate(
            name=f"trial {t.number}", number=t.number, state=_state(t), arch=arch,
            accuracy=None if acc is None else float(acc), latency_ms=ua.get("latency_ms", {}),
            params_m=ua.get("params_m"), reason=reason, proxy_seconds=ua.get("proxy_seconds"),
            started=str(t.datetime_start or ""), finished=str(t.datetime_complete or ""),
            duplicate_of=ua.get(DUPLICATE), proposed=proposed.get(ua.get("arch_id"), 1),
            rung=int(ua.get(RUNG, 0)), fidelity=str(ua.get(FIDELITY, base)),
            promoted_from=ua.get(PROMOTED_FROM), accuracy_se=ua.get(ACCURACY_SE)))
    return out


def presets_of(study: optuna.Study) -> list[Candidate]:
    """The presets scored by the same proxy and tables (stored on the study)."""
    out = []
    for name, rec in (study.user_attrs.get("presets") or {}).items():
        out.append(Candidate(name=name, number=None, state="preset",
                             arch=ArchConfig.from_dict(rec["arch"]), accuracy=rec.get("accuracy"),
                             latency_ms=rec["latency_ms"], params_m=rec.get("params_m"),
                             reason=rec.get("reason", ""), proxy_seconds=rec.get("proxy_seconds"),
                             fidelity=str(rec.get("fidelity", "")),
                             accuracy_se=rec.get("accuracy_se")))
    return out


def pareto_mask(accuracy: Sequence[float], latency: Sequence[float]) -> np.ndarray:
    """Non-dominated points when maximizing accuracy and minimizing latency."""
    acc, lat = np.asarray(accuracy, float), np.asarray(latency, float)
    mask = np.ones(len(acc), bool)
    for i in range(len(acc)):
        better = (acc >= acc[i]) & (lat <= lat[i]) & ((acc > acc[i]) | (lat < lat[i]))
        mask[i] = not better.any()
    return mask


def dominates(accuracy: Sequence[float], latency: Sequence[float], acc: float, ms: float) -> bool:
    """Whether some point is at least as accurate and as fast as (acc, ms), and better on one."""
    return any(lt <= ms and a >= acc and (lt < ms or a > acc) for a, lt in zip(accuracy, latency))


def hypervolume(accuracy: Sequence[float], latency: Sequence[float], ref_latency: float,
                ref_accuracy: float = 0.0) -> float:
    """Area dominated by the points up to (ref_accuracy, ref_latency) (Optuna's helper)."""
    from optuna._hypervolume import compute_hypervolume

    pts = np.array([[-a, lt] for a, lt in zip(accuracy, latency) if lt <= ref_latency and a >= ref_accuracy])
    if len(pts) == 0:
        return 0.0
    return float(compute_hypervolume(pts, np.array([-ref_accuracy, ref_latency])))


def _highest(candidates: Iterable[Candidate]) -> Iterator[Candidate]:
    """Each architecture once, in the order of its first trial: the result of the highest
    rung it reached (complete before failed within a rung, then the first: a repeat carries
    its twin's result). A failed promotion leaves its architecture without a result."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.arch is None or c.duplicate_of is not None or c.state not in ("complete", "fail"):
            continue
        held = best.get(c.arch_id)
        if held is None or (c.rung, c.state == "complete") > (held.rung, held.state == "complete"):
            best[c.arch_id] = c
    return (c for c in best.values() if c.state == "complete" and c.accuracy is not None)


def fronts(candidates: Sequence[Candidate], presets: Sequence[Candidate],
           sources: Mapping[str, str], *, accuracy_source: str = "",
           truth: Mapping[str, GroundTruth] | None = None,
           measured: Mapping[str, Mapping[str, Any]] | None = None) -> list[Front]:
    """One front per device over the fully trained architectures, each once, with the result
    of the highest rung it reached (`_highest`); each front carries what its accuracy is, the
    ground truth known of its architectures (`truth`, by arch_id) and the times measured here
    (`measured`, by device: the study's `optimize.measured.MEASURED_HERE`)."""
    done = list(_highest(candidates))
    out = []
    for device, source in sources.items():
        pts = [c for c in done if device in c.latency_ms]
        mask = pareto_mask([c.accuracy for c in pts], [c.latency_ms[device] for c in pts])
        members = sorted((c for c, m in zip(pts, mask) if m), key=lambda c: c.latency_ms[device])
        others = [c for c, m in zip(pts, mask) if not m]
        here = (measured or {}).get(device) or {}
        how = f"on {here.get('machine')} ({here.get('protocol')}; {here.get('date')}" if here else ""
        if here and here.get("probes_vs_build"):
            how += (f"; the table's probes, timed with them, ran x{here['probes_vs_build']:.2f} "
                    "their time at build")
        how += ")" if here else ""
        out.append(Front(device=device, source=source, members=members, others=others,
                         presets=[p for p in presets if device in p.latency_ms],
                         accuracy_source=accuracy_source, truth=dict(truth or {}),
                         measured=dict(here.get("ms") or {}), measured_how=how))
    return out


def _val_size(c: Candidate) -> int | None:
    """Validation images behind `c.accuracy`: its fidelity's budget (None if it names none)."""
    from proxies import Budget

    if not c.fidelity:
        return None
    try:
        return Budget.parse(c.fidelity).val_size
    except (ValueError, TypeError):
        return None


def accuracy_error(c: Candidate) -> float | None:
    """Standard error of `c.accuracy`: the one its proxy stated (`proxies.estimate`), else
    the binomial error on the validation images of its fidelity's budget (None where there
    is no accuracy or the fidelity names no budget)."""
    if c.accuracy is not None and c.accuracy_se is not None:
        return float(c.accuracy_se)
    n = _val_size(c)
    if c.accuracy is None or not n:
        return None
    p = min(max(c.accuracy, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def tie_note(front: Front) -> str:
    """One paragraph: how many front members tie with the most accurate, and the fastest."""
    ties = ties_with_best(front)
    tied = [c for c in front.members if ties.get(c.arch_id)]
    if not tied:
        return ""
    fastest = min(tied, key=lambda c: c.latency_ms[front.device])
    if all(c.accuracy_se is not None for c in tied):
        what = ("each accuracy is the estimate's prediction (± is 1.96 of the standard errors "
                "it states: its fit's bootstrap spread and leave-one-out error)")
    else:
        n_val = sorted({_val_size(c) for c in tied})
        what = (f"each accuracy is measured on {', '.join(map(str, n_val))} validation images "
                "(± is 1.96 binomial standard errors; seed-to-seed training noise comes on top)")
    lat = [c.latency_ms[front.device] for c in front.members]
    if len(tied) == len(front.members) > 1:
        shape = (f" Every member ties: from {min(lat):.4g} to {max(lat):.4g} ms "
                 f"({max(lat) / min(lat):.1f}x) accuracy does not rise with latency by more than "
                 "this estimate can resolve, so a slower member buys no accuracy it can show.")
    elif len(front.members) > len(tied):
        shape = (" The members faster than the fastest tie are less accurate by more than the "
                 "uncertainty: accuracy rises with latency up to "
                 f"{fastest.latency_ms[front.device]:.4g} ms on this front.")
    else:
        shape = ""
    return (f"Uncertainty: {what}. {len(tied)} of the {len(front.members)} front members are within the "
            f"uncertainty of the most accurate (`tie`); the fastest of them, {fastest.name} "
            f"({fastest.arch_id}, {fastest.latency_ms[front.device]:.2f} ms), is as accurate as "
            f"this estimate can tell.{shape}\n")


def ties_with_best(front: Front) -> dict[str, bool]:
    """arch_id -> whether the member's accuracy is within `TIE_Z` standard errors of the
    difference from the front's most accurate member (the best ties with itself). Empty
    where the accuracies carry no sampling error (a zero-cost score, say)."""
    best, margins = _tie_margins(front)
    return {c.arch_id: best - c.accuracy <= margins[c.arch_id]
            for c in front.members if c.arch_id in margins}


def _tie_margins(front: Front) -> tuple[float, dict[str, float]]:
    """The best accuracy among the members with an error, and per member (arch_id) the gap
    below it that still ties: `TIE_Z` standard errors of the difference."""
    scored = [c for c in front.members if accuracy_error(c) is not None]
    if not scored:
        return math.nan, {}
    best = max(scored, key=lambda c: c.accuracy)
    se_best = accuracy_error(best)
    return best.accuracy, {c.arch_id: TIE_Z * math.hypot(se_best, accuracy_error(c))
                           for c in scored}


#: What `proxies.estimate` writes as its provenance: "predicted PROTOCOL accuracy on DATASET".
_ESTIMATED = re.compile(r"predicted (\S+) accuracy on ")


def estimated_protocol(accuracy_source: str) -> str | None:
    """The reference protocol id a run's accuracy estimates (its `accuracy_source`), or None
    where the accuracy is a proxy's own (a short training, a zero-cost score)."""
    found = _ESTIMATED.search(accuracy_source)
    return found.group(1) if found else None


def reference_truth(dataset: str, protocol: str,
                    folders: Iterable[Path] | None = None) -> dict[str, GroundTruth]:
    """arch_id -> its accuracy under `protocol`: the mean over the seeds trained in the
    reference sets of `dataset` among `folders` (default: the committed sets,
    `proxies/reference/*/`). A seed trained in two sets counts once, from the set first by
    folder name; a set that does not read is skipped with a warning."""
    from proxies.reference import HERE, SET_FILE, ReferenceSet, read_runs

    if folders is None:
        folders = (p.parent for p in HERE.glob(f"*/{SET_FILE}"))
    seeds: dict[tuple[str, int], tuple[float, str]] = {}
    for folder in sorted(folders, key=lambda p: p.name):
        try:
            if ReferenceSet.load(folder).dataset != dataset:
                continue
            runs = read_runs(folder)
        except ValueError as e:  # a malformed set must not stop a run's outputs
            warnings.warn(f"ground truth: {folder} skipped ({e})", stacklevel=2)
            continue
        if runs.empty:
            continue
        done = runs[(runs["status"] == "ok") & (runs["protocol_id"] == protocol)]
        for r in done.itertuples():
            seeds.setdefault((r.arch_id, int(r.seed)), (float(r.accuracy), folder.name))
    by_arch: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for (arch_id, _), run in seeds.items():
        by_arch[arch_id].append(run)
    return {a: GroundTruth(accuracy=statistics.fmean(acc for acc, _ in runs), seeds=len(runs),
                           protocol=protocol, sets=tuple(sorted({s for _, s in runs})))
            for a, runs in by_arch.items()}


def _run_truth(run: Mapping[str, Any]) -> dict[str, GroundTruth]:
    """The ground truth of a run's architectures: where its accuracy estimates a reference
    protocol, the committed reference sets' trainings of it (else none)."""
    protocol = estimated_protocol(str(run.get("accuracy_source") or ""))
    if protocol is None or not run.get("dataset"):
        return {}
    return reference_truth(str(run["dataset"]), protocol)


class RungCost(NamedTuple):
    """What one rung cost: architectures trained at its budget and their proxy seconds."""

    rung: int
    fidelity: str
    trained: int
    seconds: float


def rung_costs(candidates: Sequence[Candidate]) -> list[RungCost]:
    """Per rung, the architectures trained there (repeats, never trained, left out) and the
    proxy seconds they took."""
    out = []
    for r in sorted({c.rung for c in candidates}):
        at = [c for c in candidates if c.rung == r and c.duplicate_of is None
              and c.state in ("complete", "fail", "stopped_early")]
        out.append(RungCost(rung=r, fidelity=next((c.fidelity for c in at), ""), trained=len(at),
                            seconds=float(sum(c.proxy_seconds or 0.0 for c in at))))
    return out


def _rows(candidates: Sequence[Candidate], devices: Sequence[str]) -> pd.DataFrame:
    rows = []
    for c in candidates:
        row: dict[str, Any] = {"name": c.name, "number": c.number, "state": c.state,
                               "duplicate_of": c.duplicate_of, "promoted_from": c.promoted_from,
                               "arch_id": c.arch_id, "proposed": c.proposed, "rung": c.rung,
                               "fidelity": c.fidelity, "accuracy": c.accuracy,
                               "params_m": c.params_m}
        for d in devices:
            row[f"latency_ms_{d}"] = c.latency_ms.get(d)
        row.update(arch=str(c.arch) if c.arch else "", reason=c.reason,
                   proxy_seconds=c.proxy_seconds, started=c.started, finished=c.finished)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):  # trial numbers stay integers next to the empty cells of the originals
        df["duplicate_of"] = df["duplicate_of"].astype("Int64")
        df["promoted_from"] = df["promoted_from"].astype("Int64")
    return df


#: a marker per rung in pareto.png: circles for the search's budget, then squares, diamonds...
_MARKERS = ("o", "s", "D", "^", "v", "P", "X")


class PlotPoint(NamedTuple):
    """One point of pareto.png: where it sits, its uncertainty and what is known of it."""

    name: str                      # "trial 12" or the preset name
    kind: str                      # "member", "preset" or "dominated"
    label: str                     # the short text beside it ("T0", "x3"; "" for none)
    latency_ms: float
    accuracy: float
    error: float | None            # ± (95 %): the report's column; None: the proxy states none
    tie: bool | None               # member: ties with the best (`ties_with_best`); else None
    rung: int
    fidelity: str
    truth: GroundTruth | None      # its accuracy under the reference protocol, if trained
    measured_ms: float | None = None  # its latency timed whole here (`Front.measured`), if timed


class PlotData(NamedTuple):
    """What one panel of pareto.png draws (`plot_data`); `_plot` only renders it."""

    device: str
    latency_label: str             # the x axis: device and where the latencies come from
    accuracy_label: str            # the y axis: what the accuracy is, at which budget
    points: list[PlotPoint]        # dominated, then front members by latency, then presets
    tie_margin: tuple[float, float] | None  # smallest and largest gap that still ties (95 %)
    notes: list[str]               # what the legend says beyond the markers


def _first_clause(text: str) -> str:
    """A provenance line up to its first '; ' or sentence end (what it is, not its caveats)."""
    return re.split(r"; |\.\s|\.$", text.strip(), maxsplit=1)[0]


def plot_data(front: Front) -> PlotData:
    """The points, labels and notes of `front`'s panel of pareto.png: every member and
    preset with its ± (95 %, `TIE_Z` times `accuracy_error`, as in the report), the members'
    tie flags as `ties_with_best` gives them to the report's tie sentence, and the ground
    truth the front carries for its architectures."""
    ties = ties_with_best(front)
    _, margins = _tie_margins(front)

    def point(c: Candidate, kind: str, label: str) -> PlotPoint:
        err = accuracy_error(c)
        return PlotPoint(name=c.name, kind=kind, label=label, latency_ms=c.latency_ms[front.device],
                         accuracy=c.accuracy, error=None if err is None else TIE_Z * err,
                         tie=ties.get(c.arch_id) if kind == "member" else None, rung=c.rung,
                         fidelity=c.fidelity,
                         truth=None if kind == "dominated" else front.truth.get(c.arch_id),
                         measured_ms=None if kind == "dominated" else front.measured.get(c.arch_id))

    points = [point(c, "dominated", "") for c in front.others]
    points += [point(c, "member", f"x{c.proposed}" if c.proposed > 1 else "") for c in front.members]
    points += [point(p, "preset", p.name.replace("fasternet_", "").upper())
               for p in front.presets if p.accuracy is not None]
    promoted = len({c.rung for c in [*front.members, *front.others]}) > 1
    if front.accuracy_source:
        what = _first_clause(front.accuracy_source).split(" (")[0]  # what, not how it was fitted
        fidelities = sorted({c.fidelity for c in front.members if c.fidelity})
        if "budget" not in what and fidelities:
            what += f", from the {'/'.join(fidelities)} budget"
    else:
        what = ("predicted accuracy" if any(c.accuracy_se is not None for c in front.members)
                else "proxy accuracy")
    if promoted:
        what += " (highest fidelity reached)"
    shown = [p for p in points if p.kind != "dominated"]
    bare = [p for p in shown if p.error is None]
    notes = [f"no bar on {len(bare)} point(s): the proxy states no uncertainty"] if bare else []
    tied = [margins[c.arch_id] for c in front.members if ties.get(c.arch_id)]
    return PlotData(
        device=front.device,
        latency_label=f"latency, ms/image on {front.device}: {_first_clause(front.source)}",
        accuracy_label=textwrap.fill(what, 60) + ("\nbars: ± 95 %" if len(bare) < len(shown) else ""),
        points=points, tie_margin=(min(tied), max(tied)) if tied else None, notes=notes)


def _plot(fr: list[Front], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fr), figsize=(8.0 * len(fr), 6.0), squeeze=False)
    for ax, f in zip(axes[0], fr):
        _draw(ax, plot_data(f))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw(ax: Any, d: PlotData) -> None:
    """Render one `PlotData` on a matplotlib axis."""
    import matplotlib.ticker

    dominated = [p for p in d.points if p.kind == "dominated"]
    members = [p for p in d.points if p.kind == "member"]
    presets = [p for p in d.points if p.kind == "preset"]
    promoted = len({p.rung for p in [*dominated, *members]}) > 1  # a marker per fidelity

    def fidelity(p: PlotPoint) -> str:
        return f" ({p.fidelity})" if promoted and p.fidelity else ""

    for r in sorted({p.rung for p in dominated}):
        pts = [p for p in dominated if p.rung == r]
        ax.scatter([p.latency_ms for p in pts], [p.accuracy for p in pts], s=16, c="0.7",
                   marker=_MARKERS[r % len(_MARKERS)], label="dominated" + fidelity(pts[0]))
    ax.step([p.latency_ms for p in members], [p.accuracy for p in members], where="post",
            c="tab:red", lw=1.0, alpha=0.45)
    for pts, colour in ((members, "tab:red"), (presets, "k")):
        barred = [p for p in pts if p.error is not None]
        if barred:
            ax.errorbar([p.latency_ms for p in barred], [p.accuracy for p in barred],
                        yerr=[p.error for p in barred], fmt="none", ecolor=colour, elinewidth=0.8,
                        capsize=2, alpha=0.55, zorder=2)
    margin = ""
    if d.tie_margin:
        lo, hi = (f"{m:.3g}" for m in d.tie_margin)
        margin = f" (gap within {lo}" + (f"-{hi}" if hi != lo else "") + " at 95 %)"
    looks = {True: ("white", "front: ties with the best" + margin),  # hollow: not told apart
             False: ("tab:red", "front: below the best by more than the ±"),
             None: ("tab:red", "Pareto front")}
    repeated = " (xN: proposed N times)" if any(p.label for p in members) else ""
    for r in sorted({p.rung for p in members}):
        for tie in (True, False, None):
            pts = [p for p in members if p.rung == r and p.tie is tie]
            if not pts:
                continue
            face, name = looks[tie]
            ax.scatter([p.latency_ms for p in pts], [p.accuracy for p in pts], s=34, zorder=3,
                       marker=_MARKERS[r % len(_MARKERS)], facecolors=face, edgecolors="tab:red",
                       linewidths=1.3, label=name + fidelity(pts[0]) + repeated)
            repeated = ""
    for p in members:
        if p.label:
            ax.annotate(p.label, (p.latency_ms, p.accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="tab:red")
    if presets:
        ax.scatter([p.latency_ms for p in presets], [p.accuracy for p in presets], marker="D",
                   s=30, c="k", zorder=4, label="FasterNet preset, same proxy and table")
    for p in presets:
        ax.annotate(p.label, (p.latency_ms, p.accuracy), textcoords="offset points",
                    xytext=(5, -11), fontsize=8)
    known = [p for p in d.points if p.truth is not None]
    if known:
        usual = Counter(p.truth.seeds for p in known).most_common(1)[0][0]
        for p in known:
            ax.plot([p.latency_ms] * 2, [p.accuracy, p.truth.accuracy], ls=":", lw=0.9,
                    c="tab:blue", zorder=2)
            if p.truth.seeds != usual:
                ax.annotate(f"{p.truth.seeds} seed{'s' if p.truth.seeds > 1 else ''}",
                            (p.latency_ms, p.truth.accuracy), textcoords="offset points",
                            xytext=(-6, -3), ha="right", fontsize=7, color="tab:blue")
        ax.scatter([p.latency_ms for p in known], [p.truth.accuracy for p in known], marker="*",
                   s=80, c="gold", edgecolors="tab:blue", linewidths=0.8, zorder=5,
                   label=f"ground truth {known[0].truth.protocol}: mean of {usual} "
                         f"seed{'s' if usual > 1 else ''}" + (" unless marked" if any(
                             p.truth.seeds != usual for p in known) else "")
                         + f" ({len(known)} networks)")
    timed = [p for p in d.points if p.measured_ms is not None]
    if timed:  # the table's prediction -> the time measured here, on the same accuracy
        for p in timed:
            ax.plot([p.latency_ms, p.measured_ms], [p.accuracy] * 2, ls="-", lw=0.9,
                    c="tab:green", alpha=0.7, zorder=2)
        ax.scatter([p.measured_ms for p in timed], [p.accuracy for p in timed], marker="|", s=90,
                   c="tab:green", linewidths=1.6, zorder=5,
                   label=f"timed whole here ({len(timed)} networks; the line from the table's "
                         "prediction)")
    for note in d.notes:
        ax.plot([], [], " ", label=note)
    xs = [x for p in d.points for x in (p.latency_ms, p.measured_ms) if x and x > 0]
    if xs and max(xs) > 4 * min(xs):  # past 4x, a linear axis crowds the fast end into a corner
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(textwrap.fill(d.latency_label + (" (log scale)" if ax.get_xscale() == "log"
                                                   else ""), 100), fontsize=8)
    ax.set_ylabel(d.accuracy_label, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(run_dir: Path, study: optuna.Study) -> list[Front]:
    """Write every derived file of a run folder from its study; returns the fronts."""
    run = study.user_attrs.get("run") or {}
    sources = run.get("sources") or {d: d for d in run.get("devices", [])}
    devices = list(sources)
    cands = collect(study)
    presets = presets_of(study)
    fr = fronts(cands, presets, sources, accuracy_source=str(run.get("accuracy_source") or ""),
                truth=_run_truth(run), measured=study.user_attrs.get("measured_here"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    _rows(cands, devices).to_csv(run_dir / "trials.csv", index=False)
    front_rows = []
    for f in fr:
        df = _rows(f.members, [f.device]).drop(columns="duplicate_of")
        df.insert(0, "device", f.device)
        ties = ties_with_best(f)
        df.insert(df.columns.get_loc("accuracy") + 1, "accuracy_se",
                  [accuracy_error(c) for c in f.members])
        df.insert(df.columns.get_loc("accuracy_se") + 1, "vs_best",
                  [("tie" if ties[c.arch_id] else "below") if c.arch_id in ties else ""
                   for c in f.members])
        if f.measured:  # beside the table's latency: the time measured here (`optimize.measured`)
            df.insert(df.columns.get_loc(f"latency_ms_{f.device}") + 1, "measured_here_ms",
                      [f.measured.get(c.arch_id) for c in f.members])
        front_rows.append(df)
    pareto = pd.concat(front_rows, ignore_index=True) if front_rows else pd.DataFrame()
    pareto.to_csv(run_dir / "pareto.csv", index=False)
    archs = run_dir / "archs"
    archs.mkdir(exist_ok=True)
    for f in fr:
        for c in f.members:
            c.arch.save(archs / f"{c.arch_id}.yaml")
    _plot(fr, run_dir / "pareto.png")
    (run_dir / "report.md").write_text(_report(run, cands, fr))
    return fr


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _report(run: Mapping[str, Any], cands: Sequence[Candidate], fr: Sequence[Front]) -> str:
    counts = pd.Series([c.state for c in cands]).value_counts().to_dict() if cands else {}
    out = [f"# pconv-nas run: {run.get('name', '')}", "",
           f"`{' '.join(run.get('argv', []))}`", "",
           f"Trials by state: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}.", ""]
    stopped = (run.get("time_budget") or {}).get("note")
    if stopped:  # the time budget ended the trials before --trials (`optimize.budget`)
        out += [f"Time budget: {stopped}.", ""]
    if run.get("accuracy_source"):
        out += [f"Accuracy: {run['accuracy_source']}.", ""]
    repeats = sum(c.duplicate_of is not None for c in cands)
    if repeats:
        out += [f"{repeats} of the trials proposed an architecture evaluated before: recorded in "
                "trials.csv (`duplicate_of`), not trained and not counted; the fronts list each "
                "architecture once, `proposed` is how often it was proposed.", ""]
    surplus = sum(c.state == "surplus" for c in cands)
    if surplus:
        out += [f"{surplus} trial(s) started while the last architectures of --trials were "
                "training elsewhere: not trained, not counted (`surplus` in trials.csv).", ""]
    costs = rung_costs(cands)
    promote = run.get("promote") or {}
    if len(costs) > 1 or promote:
        out += [f"Promotion (MO-ASHA, eta {promote.get('eta', '?')}, rungs "
                f"{' -> '.join(promote.get('rungs', [c.fidelity for c in costs]))}): the search's "
                "fully trained candidates, then the best 1/eta of each rung by non-domination "
                "rank and crowding distance per device, then any front member below the highest "
                "rung reached, were trained at the next rung's budget; every architecture counts "
                "with the accuracy of the highest fidelity it reached (`fidelity`). Promotions "
                "do not count toward --trials.", "",
                markdown_table(pd.DataFrame([{**c._asdict(), "seconds": f"{c.seconds:.0f}"}
                                             for c in costs])), ""]
    for f in fr:
        out += [f"## Pareto front on {f.device}", "", f"Latency source: {f.source}", ""]
        df = _rows(f.members, [f.device])[["name", "arch_id", "proposed", "fidelity", "accuracy",
                                           f"latency_ms_{f.device}", "params_m", "arch"]]
        ties = ties_with_best(f)
        if ties:
            df.insert(df.columns.get_loc("accuracy") + 1, "± (95 %)",
                      [f"{TIE_Z * e:.4f}" if (e := accuracy_error(c)) is not None else ""
                       for c in f.members])
            df.insert(df.columns.get_loc("± (95 %)") + 1, "vs best",
                      [("tie" if ties[c.arch_id] else "below") if c.arch_id in ties else ""
                       for c in f.members])
        if f.measured:
            df.insert(df.columns.get_loc(f"latency_ms_{f.device}") + 1, "measured here (ms)",
                      [_ms(f.measured.get(c.arch_id)) for c in f.members])
        out += [markdown_table(df) if len(df) else "(no completed trial yet)", ""]
        note = f.measured_note()
        out += [note, ""] if note else []
        out += [tie_note(f)] if ties else []
        if f.presets:
            pdf = _rows(f.presets, [f.device])[["name", "fidelity", "accuracy",
                                                f"latency_ms_{f.device}", "params_m"]]
            if f.measured:
                pdf.insert(pdf.columns.get_loc(f"latency_ms_{f.device}") + 1, "measured here (ms)",
                           [_ms(f.measured.get(p.arch_id)) for p in f.presets])
            dominated = []
            for p in f.presets:
                if p.accuracy is None:
                    continue
                if dominates([c.accuracy for c in f.members],
                             [c.latency_ms[f.device] for c in f.members],
                             p.accuracy, p.latency_ms[f.device]):
                    dominated.append(p.name)
            out += ["Presets scored by the same proxy and table:", "", markdown_table(pdf), "",
                    f"Presets dominated by the front: {', '.join(dominated) or 'none'}.", ""]
    return "\n".join(out)
