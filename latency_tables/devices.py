"""Devices we cannot reach, their aliases, and how a table says where its numbers come from.

`arm`, `cpu` and `gpu` are the three devices of the FasterNet paper (Chen et al., CVPR 2023):
their shipped tables are *derived* from a cost model calibrated on the paper's published
measurements (`latency_tables.derive`) until someone runs the measured builder on the real
device, which writes a *measured* table of the same name that replaces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .table import LatencyTable

__all__ = ["DERIVED_DEVICES", "resolve_alias", "provenance_note"]

DERIVED_DEVICES: dict[str, dict[str, Any]] = {
    "arm": {
        "aliases": ["cortex-a72", "raspberry-pi-4", "rpi4"],
        "description": "ARM Cortex-A72 (Raspberry Pi 4 Model B), 1 thread, batch 1, fp32",
        "hardware": {"cpu_model": "ARM Cortex-A72 (Raspberry Pi 4 Model B, 1 GB)",
                     "machine": "aarch64"},
        "target": "cpu", "threads": 1,
        "measure_command": "python -m latency_tables build --device arm --target cpu --threads 1",
        "measure_on": "the Raspberry Pi 4 (aarch64) board, with this repository installed",
    },
    "cpu": {
        "aliases": ["i9-9900x", "intel-i9-9900x"],
        "description": "Intel Core i9-9900X, 1 thread, batch 1, fp32",
        "hardware": {"cpu_model": "Intel(R) Core(TM) i9-9900X CPU @ 3.50GHz", "machine": "x86_64"},
        "target": "cpu", "threads": 1,
        "measure_command": "python -m latency_tables build --device cpu --target cpu --threads 1",
        "measure_on": "the i9-9900X machine",
    },
    "gpu": {
        "aliases": ["rtx2080ti", "rtx-2080ti", "2080ti"],
        "description": "NVIDIA GeForce RTX 2080 Ti, throughput at batch 32, fp32",
        "hardware": {"gpu_name": "NVIDIA GeForce RTX 2080 Ti", "machine": "x86_64",
                     "cpu_model": "host CPU not published"},
        "target": "cuda", "threads": None,
        "measure_command": "python -m latency_tables build --device gpu --target cuda --batch 32",
        "measure_on": "the machine with the RTX 2080 Ti",
    },
}

_ALIASES = {a: name for name, d in DERIVED_DEVICES.items() for a in d["aliases"]}


def resolve_alias(name: str) -> str:
    """Canonical table name of a device alias (`cortex-a72` -> `arm`); other names unchanged."""
    return _ALIASES.get(str(name).lower(), str(name))


def provenance_note(table: LatencyTable) -> str:
    """One or two lines for the search output: where the table's numbers come from."""
    meta = table.meta
    if table.source == "derived":
        d = meta.get("derived", {})
        loo = d.get("leave_one_out", {}).get("all", {})
        worst = d.get("leave_one_out", {}).get("worst")
        err = (f"; leave-one-out error on {int(loo.get('n', 0))} published networks: MAPE "
               f"{loo.get('mape_pct', float('nan')):.1f} %, Kendall tau "
               f"{loo.get('kendall_tau', float('nan')):.2f}" if loo else "")
        if worst:
            err += f", worst {worst['network']} {worst['error_pct']:+.0f} %"
        if d.get("resting_on_prior"):
            err += f"; constants resting on their prior: {', '.join(d['resting_on_prior'])}"
        device = DERIVED_DEVICES.get(table.name, {})
        cmd = device.get("measure_command", d.get("measure_command",
                                                  f"python -m latency_tables build --device {table.name}"))
        return (f"latency table {table.name!r} is DERIVED, not measured: a roofline cost model "
                f"calibrated on published FasterNet measurements "
                f"({device.get('description', d.get('description', table.name))}){err}.\n"
                f"  Measure the real device: run `{cmd}` on "
                f"{device.get('measure_on', 'the device')}; the measured table replaces this one.")
    dev = meta.get("device", {})
    hw = dev.get("gpu_name") or dev.get("cpu_model") or "unknown device"
    return (f"latency table {table.name!r} is {table.source} on {hw} "
            f"({meta.get('date', 'date unknown')}, batch {table.batch}, "
            f"{meta.get('threads', '?')} thread(s)).")
