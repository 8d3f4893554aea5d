"""CLI side of `python -m latency_tables calibrate --device NAME` for a device with published
figures (`DeviceSpec.derivable`: the paper's arm, cpu and gpu): derived tables."""

from __future__ import annotations

import argparse
import time

from search_space import SearchSpace

from .derive import calibrate_published
from .devices import derivable_spec, device_spec, resolve_alias

__all__ = ["cmd_calibrate_derived", "is_derived_device"]


def is_derived_device(name: str) -> bool:
    """Whether `calibrate --device name` means the published-data calibration."""
    spec = device_spec(name)
    return spec is not None and spec.derivable


def cmd_calibrate_derived(args: argparse.Namespace) -> None:
    """Fit the device profile on the published figures, report LOO error, derive the table."""
    device = resolve_alias(args.device)
    spec = derivable_spec(device)
    space = SearchSpace.from_file(args.space) if getattr(args, "space", None) else None
    t0 = time.time()
    print(f"calibrating the cost model of {device!r} ({spec.description}) "
          "on the FasterNet paper's published measurements ...")
    cal = calibrate_published(device, space=space, resolution=args.resolution or 224)
    p = cal.profile
    rates = ", ".join(f"{k} {v:.4g}" for k, v in p.rates_gmacs.items())
    print(f"profile: rates (G MAC/s; act/pool G elem-op/s) {rates}; bandwidth "
          f"{p.bandwidth_gbs:.4g} GB/s, eltwise x{p.eltwise_efficiency:.3g}, overhead "
          f"{p.overhead_us:.3g} us/op, group overhead {p.group_overhead_us:.3g} us/group")
    for k, a in cal.accuracy.items():
        print(f"leave-one-out ({k}): {a}")
    for f in cal.files:
        print(f"wrote {f}")
    print(f"wrote {cal.files[-1].with_suffix('.json')}")
    print(f"done in {time.time() - t0:.0f} s; measure the real device: run "
          f"`{spec.measure_command}` on {spec.measure_on}")
