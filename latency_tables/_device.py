"""Device description (CPU model or GPU name, cores, caches, versions) and table names."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_model", "cache_bytes", "default_device_name", "describe_device", "last_level_cache_bytes",
           "slugify"]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux, x86 or arm), else `platform.processor()`."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def cache_bytes() -> dict[str, int]:
    """Cache sizes of cpu0 by level (e.g. {"L1d": 32768, "L2": 524288, "L3": 33554432})."""
    out: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")):
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        out[f"L{level}{'d' if kind == 'Data' else ''}"] = int(size.rstrip("KMG")) * mult
    return out


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """Size of the largest cache (bytes); `default` where it cannot be read."""
    sizes = cache_bytes()
    return max(sizes.values()) if sizes else default


def slugify(text: str) -> str:
    """`AMD EPYC 7B13 64-Core Processor` -> `amd-epyc-7b13-64-core-processor`."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "device"


def default_device_name(target: str = "cpu") -> str:
    """Name of this machine's table: slug of the CPU model or the GPU name."""
    if target == "cuda":
        return slugify(torch.cuda.get_device_name(0))
    return slugify(cpu_model())


def describe_device(target: str = "cpu") -> dict[str, Any]:
    """Everything about this machine that a latency depends on, for the JSON sidecar."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "logical_cpus": os.cpu_count(),
        "caches_bytes": cache_bytes(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if target == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info
