"""Validate a table against whole networks, and fit its calibration (`correction`).

Whole networks are measured with the table's protocol (fused, eval, no grad, same batch,
threads and clock), in `rounds` round-robin passes over the sample so that a burst of load
on a shared machine hits one round of a network rather than all of them; a network's
latency is the minimum over rounds of the per-round median (the table's estimator).

Correction. A layer timed in its cache context (`latency_tables.measure`) still misses what
only a whole network has: Python dispatch between modules, the allocator's behaviour over a
full forward pass, and weights that fall out of the last-level cache in large networks.
`calibrate` fits `ms = scale * sum + offset_ms` (least squares on relative error) on a few
calibration networks spanning the space's sizes, drawn with their own seed
(`calibration_archs`); `validate` then reports the error, raw and
corrected, on a fresh sample that excludes every calibration network, so the numbers are
out-of-sample. nn-Meter (Zhang et al., MobiSys 2021) reports its kernel-level predictor the
same way: share of models within +-10 % of the measured latency on held-out models.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from search_space import ArchConfig, SearchSpace, build_model, fuse
from search_space.forms import to_form

from ._device import describe_device
from .layers import arch_layers
from .measure import Protocol, Timing, time_compiled, time_network
from .regress import TERMS
from .runtimes import get_runtime
from .table import LatencyTable

__all__ = ["Accuracy", "Validation", "accuracy", "fit_correction", "measure_networks", "measure_shuffled",
           "sample_archs", "calibration_archs", "network_macs", "calibrate", "correction_note",
           "validate", "plot_validation", "split_by_measured_share"]


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Prediction error over a sample: MAPE (%), shares within +-5 % / +-10 %, Kendall tau."""

    n: int
    mape_pct: float
    within_5_pct: float
    within_10_pct: float
    kendall_tau: float
    mean_error_pct: float

    def __str__(self) -> str:
        return (f"N={self.n}  MAPE {self.mape_pct:.2f} %  within +-5 %: {self.within_5_pct:.0f} %  "
                f"within +-10 %: {self.within_10_pct:.0f} %  Kendall tau {self.kendall_tau:.3f}  "
                f"mean error {self.mean_error_pct:+.2f} %")


@dataclasses.dataclass(frozen=True)
class Validation:
    """Per-network rows and the accuracy of three predictions on the validation sample.

    `raw`: the sum of layer latencies; `corrected`: with the table's stored correction
    (`LatencyTable.predict`); `session`: with a correction fitted on the calibration networks
    measured in the same rounds as the validation networks (`session_correction`).
    """

    rows: pd.DataFrame
    raw: Accuracy
    corrected: Accuracy
    session: Accuracy
    session_correction: tuple[float, float]
    table: str
    seed: int


def accuracy(measured: Iterable[float], predicted: Iterable[float]) -> Accuracy:
    m, p = np.asarray(list(measured), float), np.asarray(list(predicted), float)
    err = (p - m) / m * 100
    tau = float(kendalltau(m, p).statistic) if len(m) > 1 else float("nan")
    return Accuracy(len(m), float(np.abs(err).mean()), float((np.abs(err) <= 5).mean() * 100),
                    float((np.abs(err) <= 10).mean() * 100), tau, float(err.mean()))


def fit_correction(measured: Iterable[float], raw: Iterable[float]) -> tuple[float, float]:
    """(scale, offset_ms) minimizing the squared relative error of scale * raw + offset."""
    y, x = np.asarray(list(measured), float), np.asarray(list(raw), float)
    a = np.stack([x / y, 1 / y], axis=1)
    (scale, offset), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return float(scale), float(offset)


def sample_archs(space: SearchSpace, n: int, seed: int,
                 exclude: Iterable[str] = (), *, at_most: bool = False) -> list[ArchConfig]:
    """`n` distinct architectures from `space` (seeded), none whose id is in `exclude`; with
    `at_most`, fewer where the space holds fewer (else ValueError)."""
    rng = np.random.default_rng(seed)
    skip, out = set(exclude), []
    for _ in range(100 * n):  # bounded: a tiny space may hold fewer than n new architectures
        arch = space.sample(rng)
        if arch.arch_id not in skip:
            skip.add(arch.arch_id)
            out.append(arch)
            if len(out) == n:
                return out
    if at_most:
        return out
    raise ValueError(f"{space.source}: cannot draw {n} distinct architectures outside the "
                     f"{len(set(exclude))} excluded ones (space too small?)")


#: Candidates drawn per calibration network; `calibration_archs` spreads its picks over them.
_POOL_PER_NETWORK = 20


def network_macs(arch: ArchConfig, resolution: int = 224) -> float:
    """Multiply-accumulates of `arch` at batch 1: the MAC work terms of its layers
    (`regress.TERMS`). Ranks networks by size without building or timing them."""
    return sum(v for _, sig in arch_layers(arch, resolution)
               for k, v in TERMS[sig.kind](sig).items() if k.endswith("macs"))


def calibration_archs(space: SearchSpace, n: int = 10, seed: int = 1000,
                      resolution: int = 224) -> list[ArchConfig]:
    """The calibration networks of a table (`calibrate`'s sample; `validate` excludes them):
    `n` networks at evenly spaced ranks by `network_macs` among `_POOL_PER_NETWORK * n` drawn
    with `seed`, the pool's smallest and largest included. They span the sizes a search
    meets (its 0.5th to 99.5th percentile), so the correction's offset is fitted on small
    networks rather than extrapolated to them.

    Measured on a Zen 5 VM (`benchmarks/calibration_choice.py`, re-fitting on 71 networks
    timed in one session): these beat 10 drawn at random on every table tried (1-minute
    table: MAPE 2.41 vs 2.53 %, worst 14 vs 17 %). Adding the space's smallest network
    (1.4 ms, which runs faster whole than its layers' sum) pinned the offset below zero and
    cost the bulk (a one-off re-fit, not in `benchmarks/`: 90 % within 10 % instead of 98 %)."""
    if n < 2:
        raise ValueError(f"calibration networks: n={n}; the correction (scale, offset) needs >= 2")
    pool = sample_archs(space, _POOL_PER_NETWORK * n, seed, at_most=True)
    pool.sort(key=lambda a: network_macs(a, resolution))
    ranks = np.unique(np.round(np.linspace(0, len(pool) - 1, n)).astype(int))
    return [pool[i] for i in ranks]


def measure_networks(archs: list[ArchConfig], proto: Protocol, resolution: int, rounds: int = 2,
                     progress: Callable[[int, int], None] | None = None,
                     num_classes: int = 1000) -> list[float]:
    """Whole-network latency of each arch, ms per batch (min over rounds of the median), in the
    protocol's runtime and deployment form (each network compiled once, before the rounds)."""
    if proto.target == "cpu":
        torch.set_num_threads(proto.threads)
    if proto.form == "fused":
        models = [fuse(build_model(a, num_classes=num_classes).eval()) for a in archs]
    else:
        models = [to_form(build_model(a, num_classes=num_classes), proto.form) for a in archs]
    timers: list[Callable[[], Timing]]
    if proto.runtime == "eager":
        timers = [functools.partial(time_network, m, proto, resolution) for m in models]
    else:
        runtime = get_runtime(proto.runtime)
        timers = []
        for a, m in zip(archs, models):
            x = (torch.randn(proto.batch, 3, resolution, resolution),)
            c = runtime.compile(m, x, proto.threads, what=f"{a.arch_id} ({proto.form} form)")
            timers.append(functools.partial(time_compiled, c, x, proto))
    best = [float("inf")] * len(archs)
    for r in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer().median_ms)
            if progress:
                progress(r * len(archs) + i + 1, rounds * len(archs))
    return best


def measure_shuffled(archs: list[ArchConfig], proto: Protocol, resolution: int, seed: int,
                     rounds: int = 2, progress: Callable[[int, int], None] | None = None) -> list[float]:
    """`measure_networks` over `archs` in a seeded shuffled order, returned in `archs` order: a
    drift of the machine during the rounds falls on every group of them alike (calibration
    networks timed beside judged ones)."""
    order = np.random.default_rng(seed).permutation(len(archs))
    timed = measure_networks([archs[i] for i in order], proto, resolution, rounds, progress)
    out = [0.0] * len(archs)
    for pos, i in enumerate(order):
        out[i] = timed[pos]
    return out


def _space_of(table: LatencyTable, space: SearchSpace | None) -> SearchSpace:
    if space is not None:
        return space
    src = table.meta.get("space")
    return SearchSpace.from_file(src) if src and Path(src).exists() else SearchSpace.default()


def _check_measurable(table: LatencyTable) -> None:
    """Calibration and validation measure on this machine: the table must be of this machine."""
    if table.source != "measured":
        raise ValueError(f"{table.name}: a {table.source} table; calibrate/validate measure "
                         "networks on this machine, so they need a table measured here")
    target = table.meta.get("target", "cpu")
    theirs = table.meta.get("device", {})
    ours = describe_device(target)
    key = "gpu_name" if target == "cuda" else "cpu_model"
    if theirs.get(key) != ours.get(key):
        raise ValueError(f"{table.name}: measured on {theirs.get(key)!r}, this machine is "
                         f"{ours.get(key)!r}; calibrate/validate must run on the table's device")


def _table_proto(table: LatencyTable) -> Protocol:
    return Protocol.from_dict(table.meta.get("protocol", {}))


def correction_note(corr: dict[str, Any]) -> str:
    """The line a build or `calibrate` prints for a fitted correction."""
    return (f"correction: ms = {corr['scale']:.4f} x sum + {corr['offset_ms']:.3f} ms "
            f"(fitted on {corr['n']} networks, seed {corr['seed']})")


def calibrate(table: LatencyTable, *, n: int = 10, seed: int = 1000, rounds: int = 2,
              space: SearchSpace | None = None, write: bool = True,
              progress: Callable[[int, int], None] | None = None,
              timed: dict[str, float] | None = None) -> dict[str, Any]:
    """Fit the table's `correction` on `n` calibration networks; store it in the sidecar.

    `timed` ({arch_id: ms per batch}, from `calibration_archs` + `measure_networks` with the
    table's protocol) reuses networks measured earlier in the same session (a budgeted build
    measures them first, inside its budget)."""
    _check_measurable(table)
    archs = calibration_archs(_space_of(table, space), n, seed, table.resolution)
    archs = [a for a in archs if table.covers(a)]
    if timed is None:
        measured = measure_networks(archs, _table_proto(table), table.resolution, rounds, progress)
    else:
        measured = [timed[a.arch_id] for a in archs]
    raw = [table.raw_ms(a) for a in archs]
    scale, offset = fit_correction(measured, raw)
    corr = {"scale": scale, "offset_ms": offset, "n": len(archs), "seed": seed,
            "fitted_on": [a.arch_id for a in archs],
            "form": "ms per batch = scale * sum(layer ms) + offset_ms"}
    if write:
        table.store("correction", corr, "the correction")
        table.scale, table.offset_ms = scale, offset
    return corr


def validate(table: LatencyTable, *, n: int = 50, seed: int = 0, rounds: int = 2,
             calib_n: int = 10, calib_seed: int | None = None, space: SearchSpace | None = None,
             progress: Callable[[int, int], None] | None = None) -> Validation:
    """Measure `n` fresh networks and compare them with the table's predictions.

    The validation sample excludes the calibration networks (`calib_n` drawn with
    `calib_seed`, default: the seed of the table's correction, else 1000) and every network
    the stored correction was fitted on. Calibration and validation networks are measured
    interleaved, in the same rounds, so that a session correction fitted on the former sees
    the same machine state as the latter (on a shared machine the load drifts by several
    percent over minutes). `calib_n=0` skips the session correction.
    """
    _check_measurable(table)
    space = _space_of(table, space)
    corr = table.meta.get("correction") or {}
    calib_seed = int(corr.get("seed", 1000)) if calib_seed is None else calib_seed
    calib = ([a for a in calibration_archs(space, calib_n, calib_seed, table.resolution)
              if table.covers(a)] if calib_n else [])
    exclude = {a.arch_id for a in calib} | set(corr.get("fitted_on", ()))
    archs = [a for a in sample_archs(space, n, seed, exclude=exclude) if table.covers(a)]
    measured = measure_shuffled(calib + archs, _table_proto(table), table.resolution, seed,
                                rounds, progress)
    b = table.batch
    m_cal, m_val = measured[:len(calib)], measured[len(calib):]
    scale, offset = (fit_correction(m_cal, [table.raw_ms(a) for a in calib]) if len(calib) >= 2
                     else (1.0, 0.0))
    rows = pd.DataFrame({
        "arch_id": [a.arch_id for a in archs], "arch": [str(a) for a in archs],
        "measured_ms": [m / b for m in m_val],
        "raw_ms": [table.raw_ms(a) / b for a in archs],
        "predicted_ms": [table.predict(a) for a in archs]})
    rows["session_ms"] = [(scale * table.raw_ms(a) + offset) / b for a in archs]
    rows["measured_share"] = [table.measured_share(a) for a in archs]
    for col in ("raw", "predicted", "session"):
        rows[f"{col}_error_pct"] = (rows[f"{col}_ms"] / rows["measured_ms"] - 1) * 100
    acc = {col: accuracy(rows["measured_ms"], rows[f"{col}_ms"])
           for col in ("raw", "predicted", "session")}
    return Validation(rows, acc["raw"], acc["predicted"], acc["session"], (scale, offset),
                      table.name, seed)


def split_by_measured_share(v: Validation) -> dict[str, Accuracy | None]:
    """The stored correction's accuracy on networks whose summed time comes mostly (>= 50 %)
    from measured rows, and on the others (a budgeted table; None where fewer than 2)."""
    out: dict[str, Accuracy | None] = {}
    for label, mask in (("mostly measured", v.rows["measured_share"] >= 0.5),
                        ("mostly predicted", v.rows["measured_share"] < 0.5)):
        r = v.rows[mask]
        out[label] = accuracy(r["measured_ms"], r["predicted_ms"]) if len(r) >= 2 else None
    return out


def plot_validation(v: Validation, path: str | Path) -> Path:
    """Scatter of predicted vs measured ms (raw and corrected), with the +-10 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    m = v.rows["measured_ms"]
    ax.scatter(m, v.rows["raw_ms"], s=14, marker="x", color="0.55",
               label=f"sum of layers ({v.raw.mape_pct:.1f} % MAPE)")
    ax.scatter(m, v.rows["predicted_ms"], s=16,
               label=f"stored correction ({v.corrected.mape_pct:.1f} % MAPE)")
    ax.scatter(m, v.rows["session_ms"], s=16, marker="^",
               label=f"session correction ({v.session.mape_pct:.1f} % MAPE)")
    lo, hi = float(m.min()) * 0.85, float(m.max()) * 1.15
    xs = np.linspace(lo, hi, 10)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="C0", alpha=0.1, label="+-10 %")
    ax.set(xscale="log", yscale="log", xlabel="measured latency (ms / image)",
           ylabel="predicted latency (ms / image)",
           title=f"{v.table}: N={v.corrected.n}, seed {v.seed}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
