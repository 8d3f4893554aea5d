"""A machine's fingerprint: what a per-layer latency depends on, besides the layer.

A latency table holds only where it was measured. Two machines whose CPU model strings match
(a cloud VM reports "AMD EPYC" for several generations and slices) can still differ by 2x:
a 2-vCPU slice with 8 MiB of L3 ran every network of a table built on a slice with 32 MiB of
L3 52-56 % slower than the table said (issue 23). The fingerprint records what decides the
speed of a conv kernel: the CPU model, the SIMD extensions the kernels dispatch on
(AVX2/AVX-512/AMX on x86, NEON/SVE on ARM), the cache sizes per level, the cores, and the
torch and runtime versions (a new oneDNN changes kernels). A build stores it in the table's
sidecar (`fingerprint`); `compare` says, in words, how another machine differs.

The fingerprint explains a difference; it does not decide whether a table holds here. Only
timing does (`trust.verify` times a few probe networks): two fingerprints that match can
still differ in speed (a noisy neighbour, a throttled host), and a torch upgrade that changes
the fingerprint may change nothing that matters.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._device import cache_bytes, cpu_model, default_device_name

__all__ = ["ISA_FLAGS", "compare", "hardware_id", "isa_flags", "local_table_name",
           "machine_fingerprint", "runtime_version", "table_fingerprint"]

#: The CPU extensions conv/GEMM kernels (oneDNN, XNNPACK, ATen's vectorized loops) dispatch
#: on, as /proc/cpuinfo names them (x86 `flags`, ARM `Features`): a difference in these
#: changes which kernel runs.
ISA_FLAGS = (
    # x86: 256-bit, 512-bit, bf16/int8 dot products, AMX tiles
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    # ARM: NEON (asimd), half precision, dot product, bf16, int8 matmul, SVE
    "asimd", "asimdhp", "fphp", "asimddp", "bf16", "i8mm", "sve", "sve2",
)
#: Fields `compare` reports, in this order, with their words.
_COMPARED = (("cpu_model", "CPU"), ("machine", "architecture"), ("gpu_name", "GPU"),
             ("isa", "ISA"), ("caches_bytes", "caches"), ("logical_cpus", "logical CPUs"),
             ("torch", "torch"), ("runtime", "runtime"), ("runtime_version", "runtime version"),
             ("cuda", "CUDA"))
#: The fields that name the hardware (not its software): `hardware_id` hashes these.
_HARDWARE = ("cpu_model", "machine", "isa", "caches_bytes", "logical_cpus")


def isa_flags(cpuinfo: str | None = None) -> list[str]:
    """The `ISA_FLAGS` this CPU has (sorted), from /proc/cpuinfo (or the given text); [] where
    it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    have = set(m.group(1).split()) if m else set()
    return sorted(f for f in ISA_FLAGS if f in have)


def runtime_version(runtime: str = "eager") -> str | None:
    """The installed version of `runtime` (`runtimes.RUNTIMES`; torch for eager), None if
    it is not installed or unknown."""
    from .runtimes import RUNTIMES

    known = RUNTIMES.get(runtime)
    if known is None or not known.available():
        return None
    try:
        return known.version()
    except (ValueError, importlib.metadata.PackageNotFoundError):
        return None


def machine_fingerprint(target: str = "cpu", runtime: str = "eager") -> dict[str, Any]:
    """This machine as a latency table depends on it: CPU model, architecture, ISA flags,
    cache sizes per level (bytes), logical CPUs, torch and runtime versions; on CUDA, the GPU
    name and the CUDA version too. JSON-serializable."""
    fp: dict[str, Any] = {
        "cpu_model": cpu_model(), "machine": platform.machine(), "isa": isa_flags(),
        "caches_bytes": cache_bytes(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
        "runtime": runtime, "runtime_version": runtime_version(runtime),
    }
    if target == "cuda":
        fp.update(gpu_name=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return fp


def table_fingerprint(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of the machine a table was measured on: its sidecar's `fingerprint`,
    or for a table built before the field, what its `device` record holds (no ISA flags)."""
    if meta.get("fingerprint"):
        return dict(meta["fingerprint"])
    dev = meta.get("device") or {}
    fp = {k: dev[k] for k in ("cpu_model", "machine", "caches_bytes", "logical_cpus", "torch",
                              "gpu_name", "cuda") if dev.get(k) is not None}
    runtime = meta.get("runtime", "eager")
    fp["runtime"] = runtime
    version = meta.get("runtime_version") or (dev.get("torch") if runtime == "eager" else None)
    if version:
        fp["runtime_version"] = version
    return fp


def _words(key: str, value: Any) -> str:
    if key == "caches_bytes":
        return ", ".join(f"{level} {_size(n)}" for level, n in sorted(value.items()))
    if key == "isa":
        return " ".join(value) or "none"
    return str(value)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def compare(table: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """How `here` differs from `table` (two fingerprints), one phrase per field present in
    both, e.g. "L3 cache 32 MiB in the table, 8 MiB here"; [] where nothing differs."""
    out = []
    for key, word in _COMPARED:
        a, b = table.get(key), here.get(key)
        if a is None or b is None or a == b:
            continue
        if key == "caches_bytes":
            for level in sorted(set(a) | set(b)):
                if a.get(level) != b.get(level):
                    x, y = (_size(v) if v else "none" for v in (a.get(level), b.get(level)))
                    out.append(f"{level} cache {x} in the table, {y} here")
        elif key == "isa":
            gone, new = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            out.append("ISA: " + "; ".join(
                part for part in (f"{' '.join(gone)} in the table, not here" if gone else "",
                                  f"{' '.join(new)} here only" if new else "") if part))
        else:
            out.append(f"{word} {_words(key, a)} in the table, {_words(key, b)} here")
    return out


def hardware_id(fingerprint: Mapping[str, Any] | None = None) -> str:
    """Six hex digits naming the hardware of a fingerprint (default: this machine's CPU): equal
    for machines whose CPU model, ISA flags, caches and core count match."""
    fp = fingerprint if fingerprint is not None else machine_fingerprint()
    hw = {k: fp.get(k) for k in _HARDWARE}
    return hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:6]


def local_table_name(target: str = "cpu") -> str:
    """The name a table measured here should take when a table of the model's plain name
    (`default_device_name`) comes from another machine: the model's name and `hardware_id`
    (`amd-epyc-3f2a1c`); `auto` prefers it to the plain name."""
    return f"{default_device_name(target)}-{hardware_id()}"
