"""Where a proxy trains: device strings, mixed precision, deterministic settings.

`resolve_device("auto" | "cpu" | "cuda" | "cuda:N")` turns a user's device string into a
`torch.device` or raises `DeviceError` (a configuration error: the CLI exits 2 before any
trial) — never a failed candidate. `"auto"` is CUDA when available, else the CPU.

Mixed precision (`resolve_precision`): ``auto`` is bf16 on a CUDA device that supports it,
else fp16 with a gradient scaler, and fp32 on the CPU (CPU autocast is slower than fp32 for
these small convolutions and changes the results that the shipped reports were made with).

Determinism (`torch_settings`): on the CPU, `torch.use_deterministic_algorithms(True)`
makes a run bit-exact for a seed. On CUDA the same call raises inside cuBLAS unless
``CUBLAS_WORKSPACE_CONFIG`` is set, and a few kernels have no deterministic form at all;
so on CUDA the workspace is configured, cuDNN is pinned to deterministic kernels and the
flag is set with ``warn_only=True``: the run is repeatable as far as the kernels allow,
and `determinism(device)` says so ("exact" on the CPU, "best-effort" on CUDA) in every
result and in the run's `run.json`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["DeviceError", "PRECISIONS", "resolve_device", "resolve_precision", "determinism",
           "torch_settings", "device_name", "precision_name"]

#: Accepted precision settings of a budget.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")
# cuBLAS needs a fixed workspace to be deterministic (PyTorch "Reproducibility" notes).
_CUBLAS_WORKSPACE = ":4096:8"


class DeviceError(ValueError):
    """A device string that is malformed or names a device this machine lacks."""


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` -> a `torch.device`."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    match = _DEVICE.match(str(spec).strip().lower())
    if match is None:
        raise DeviceError(f"device {spec!r}: choose auto, cpu, cuda or cuda:N")
    kind, index = match.groups()
    if kind == "auto":
        if index is not None:
            raise DeviceError(f"device {spec!r}: 'auto' takes no index; use cuda:N")
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        if index not in (None, "0"):
            raise DeviceError(f"device {spec!r}: the CPU has no index; use cpu")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}); use cpu or auto")
    n = torch.cuda.device_count()
    i = int(index or 0)
    if i >= n:
        raise DeviceError(f"device {spec!r}: this machine has {n} CUDA device(s), "
                          f"cuda:0..cuda:{n - 1}")
    return torch.device("cuda", i)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a run: float32 (no autocast), bfloat16 or float16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"precision bf16: {device} does not support it; "
                              "use fp16 or auto")
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(dtype: torch.dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the arithmetic `resolve_precision` chose."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def determinism(device: torch.device, deterministic: bool = True) -> str:
    """What `torch_settings` guarantees on `device`: exact, best-effort or off."""
    if not deterministic:
        return "off"
    return "exact" if device.type == "cpu" else "best-effort"


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextmanager
def torch_settings(threads: int, deterministic: bool = True,
                   device: torch.device | None = None) -> Iterator[None]:
    """Run with `threads` intra-op CPU threads and deterministic algorithms; restore after.

    `threads` is a CPU setting only; on CUDA, determinism is best-effort (module docstring).
    """
    cuda = device is not None and device.type == "cuda"
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    if cuda and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(deterministic, warn_only=cuda)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old_cudnn
