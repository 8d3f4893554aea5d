"""Resumable benchmark steps of one machine: `reports/<name>/steps.json`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from latency_tables._device import describe_device

#: What makes two runs the same machine for a report (a report is of one machine).
SAME_MACHINE = ("cpu_model", "caches_bytes", "torch")


def open_steps(path: Path, resume: bool = True, **settings: Any) -> dict[str, Any]:
    """The steps stored at `path` (empty if none), with this machine's description and the
    date and `settings` set where new. With `resume`, steps of another machine are refused
    (SystemExit naming the way on): their figures cannot be compared with this one's."""
    steps = json.loads(path.read_text()) if path.exists() else {}
    here = describe_device("cpu")
    there = steps.get("device")
    if resume and there and any(there.get(k) != here.get(k) for k in SAME_MACHINE):
        raise SystemExit(f"{path} holds steps measured on another machine ({there.get('cpu_model')}, "
                         f"caches {there.get('caches_bytes')}, torch {there.get('torch')}); a report "
                         "is of one machine: pass another --out, or delete it to start again")
    for key, value in {"device": here, "date": time.strftime("%Y-%m-%d"), **settings}.items():
        steps.setdefault(key, value)
    return steps


def time_interleaved(archs: list, calib: list, proto: Any, resolution: int, seed: int) -> dict[str, Any]:
    """`archs` and the calibration networks `calib` timed whole in one session, in a seeded
    shuffled order (`validate.measure_shuffled`: 2 rounds, min of medians, ms per image): a
    session correction fitted on the latter sees the machine state of the former, so a table
    is judged apart from the machine's drift since its build (a shared VM drifts by several
    percent over minutes), as `validate` does."""
    from latency_tables.validate import measure_shuffled

    t0 = time.monotonic()
    ms = [m / proto.batch for m in measure_shuffled(list(archs) + list(calib), proto, resolution, seed)]
    return {"arch_id": [a.arch_id for a in archs], "measured_ms": ms[:len(archs)],
            "calib_id": [a.arch_id for a in calib], "calib_ms": ms[len(archs):],
            "calib_archs": [a.to_dict() for a in calib], "seconds": round(time.monotonic() - t0, 1)}


def timed_calibration(nets: dict[str, Any]) -> list:
    """The calibration networks a `time_interleaved` step timed, in its `calib_ms` order (kept
    in the step: `validate.calibration_archs` may draw others after a change)."""
    from search_space import ArchConfig

    return [ArchConfig.from_dict(d, source="steps calib_archs") for d in nets["calib_archs"]]


def session_predictions(table: Any, archs: list, calib: list, calib_ms: list[float]) -> Any:
    """`table`'s predictions of `archs` with a session correction (scale and offset refitted
    on the calibration networks timed beside them), ms per image."""
    import numpy as np

    from latency_tables.validate import fit_correction

    scale, offset = fit_correction(np.array(calib_ms) * table.batch, [table.raw_ms(a) for a in calib])
    return np.array([(scale * table.raw_ms(a) + offset) / table.batch for a in archs])


def unseen_archs(n: int, seed: int, space: Any = None, with_t0: bool = True) -> list:
    """`n` networks of `space` (default: the default space) sampled with `seed`, none of them a
    calibration network (which builds fit their correction on), and FasterNet-T0 last."""
    from latency_tables.validate import calibration_archs, sample_archs
    from search_space import PRESETS, SearchSpace

    space = space or SearchSpace.default()
    calib = {a.arch_id for a in calibration_archs(space)}
    return [*sample_archs(space, n, seed, exclude=calib)] + ([PRESETS["fasternet_t0"]] if with_t0 else [])


def small_archs(n: int, seed: int, space: Any = None, pool: int = 10) -> list:
    """The `n` smallest networks by MACs (`validate.network_macs`) among `pool * n` of `space`
    sampled with `seed`, none a calibration network: the fast end of a front, where a
    `--max-latency` lands and a table's offset weighs most."""
    from latency_tables.validate import calibration_archs, network_macs, sample_archs
    from search_space import SearchSpace

    space = space or SearchSpace.default()
    calib = {a.arch_id for a in calibration_archs(space)}
    return sorted(sample_archs(space, pool * n, seed, exclude=calib), key=network_macs)[:n]
