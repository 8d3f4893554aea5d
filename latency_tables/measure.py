"""Timing protocol: one layer in a realistic cache context, or one whole network.

The cache bias. A layer timed alone on the same input, over and over, keeps its weights and
its input in the CPU caches, while inside a network its weights were last touched one full
forward pass ago (evicted by every other layer's weights and activations). Summing layers
timed alone therefore underestimates whole networks; the first measurement on this machine
found 5-22 % for FasterNet-T0..T2. nn-Meter (Zhang et al., MobiSys 2021) avoids the bias by
measuring kernels under the same conditions as in a model; we do the same with two contexts:

- A FasterNet block keeps the shape of its input, so it is timed the way a stage runs it: a
  chain of `copies` distinct copies of the block (each with its own weights), the input of
  each being the output of the previous one. The activation stays hot (just written, as in
  the network) while each copy's weights are evicted by the other copies' weights.
- Stem, merges and the head change shape; they are timed rotating over `copies`
  (module, input) pairs with distinct weights and inputs.

`copies` is chosen per layer so that the copies together exceed `context_bytes` (default:
the last-level cache size; see `_device.cache_bytes`), between 2 and `max_copies`
(`max_copies=1` gives the naive protocol: one layer on one input). A layer's latency is the
time of one pass over the copies divided by `copies`.

Noise. Machines may be shared: every layer is warmed up, then timed over many passes (at
least `min_repeats` and `min_time_s`), and the statistic is the median with the interquartile
range as spread. CPU timing uses `time.perf_counter`; CUDA timing uses CUDA events around
the pass and a synchronize, at a large batch (throughput protocol of the FasterNet paper).

Runtimes. `Protocol.runtime` names where the layer runs (`runtimes.RUNTIMES`: eager PyTorch,
ONNX Runtime, ExecuTorch + XNNPACK) and `Protocol.form` the deployment form it is built in
(`search_space.forms.FORMS`). Outside eager, the copies are exported together as one program
(the chain as a sequence, the rotation as one program taking every copy's input), compiled
once, and timed as above; a layer's time in the build (`seconds`) includes that export.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["Protocol", "Timing", "time_layer", "time_network", "time_callable", "time_compiled"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a table is measured (stored in the table's JSON sidecar).

    Args:
        target: "cpu" or "cuda".
        batch: images per forward pass.
        threads: torch intra-op threads (CPU).
        warmup: untimed passes before timing.
        min_repeats, max_repeats: bounds on timed passes per layer.
        min_time_s: keep timing a layer until this much time has been spent (seconds).
        context_bytes: total footprint of the copies a layer is timed among (bytes).
        max_copies: upper bound on copies per layer.
        clock: "thread" (CPU time of the calling thread, `time.thread_time`; CPU with one
            thread only), "wall" (`time.perf_counter`) or "cuda" (CUDA events). "auto"
            picks "cuda" on CUDA, "thread" for one CPU thread and "wall" otherwise.
        runtime: where layers and networks run (`runtimes.RUNTIMES`: "eager", "onnxruntime",
            "executorch"); every runtime there runs on the calling thread with one thread.
        form: the deployment form layers and networks are built in (`search_space.FORMS`).
    """

    target: str = "cpu"
    batch: int = 1
    threads: int = 1
    warmup: int = 3
    min_repeats: int = 10
    max_repeats: int = 200
    min_time_s: float = 0.12
    context_bytes: int = 32 << 20
    max_copies: int = 8
    clock: str = "auto"
    runtime: str = "eager"
    form: str = "fused"

    @property
    def resolved_clock(self) -> str:
        if self.clock != "auto":
            return self.clock
        if self.target == "cuda":
            return "cuda"
        return "thread" if self.threads == 1 else "wall"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-pass latency statistics in ms (one pass = one batch through one layer or network)."""

    median_ms: float
    iqr_ms: float
    p10_ms: float
    repeats: int
    copies: int = 1


def _footprint(module: nn.Module, x: torch.Tensor | None) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    return total + (x.numel() * x.element_size() if x is not None else 0)


def time_callable(fn: Callable[[], Any], proto: Protocol, per_pass: int = 1) -> Timing:
    """Time `fn` (one pass) with warm-up and repeats; ms per pass divided by `per_pass`."""
    clock = proto.resolved_clock
    cuda = clock == "cuda"
    now = time.thread_time if clock == "thread" else time.perf_counter
    for _ in range(proto.warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < proto.max_repeats and (
            len(samples) < proto.min_repeats or time.perf_counter() - start < proto.min_time_s):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(begin.elapsed_time(end) / per_pass)
        else:
            t0 = now()
            fn()
            samples.append((now() - t0) * 1e3 / per_pass)
    q = statistics.quantiles(samples, n=20, method="inclusive")  # 5 % steps
    q25, q75 = statistics.quantiles(samples, n=4, method="inclusive")[0::2]
    return Timing(statistics.median(samples), q75 - q25, q[1], len(samples))


def time_layer(module: nn.Module, x: torch.Tensor, proto: Protocol, chain: bool) -> Timing:
    """Latency of one layer (ms per batch) in the cache context described in the module doc.

    `chain=True` for shape-preserving layers (blocks): copies run one after another on each
    other's outputs; otherwise copies rotate over distinct inputs. Outside eager PyTorch
    (`proto.runtime`), the copies are compiled as one program in that runtime.
    """
    if proto.runtime != "eager":
        return _time_layer_compiled(module, x, proto, chain)
    return _time_layer_eager(module, x, proto, chain)


def _copies(module: nn.Module, x: torch.Tensor, proto: Protocol, chain: bool) -> int:
    per_copy = _footprint(module, None if chain else x)
    return min(proto.max_copies, max(2, -(-proto.context_bytes // max(per_copy, 1))))


@torch.inference_mode()
def _time_layer_eager(module: nn.Module, x: torch.Tensor, proto: Protocol, chain: bool) -> Timing:
    device = torch.device(proto.target)
    module, x = module.to(device).eval(), x.to(device)
    copies = _copies(module, x, proto, chain)
    mods = [module] + [copy.deepcopy(module) for _ in range(copies - 1)]
    if chain:
        def run() -> None:
            h = x
            for m in mods:
                h = m(h)
    else:
        inputs = [x] + [torch.randn_like(x) for _ in range(copies - 1)]

        def run() -> None:
            for m, xi in zip(mods, inputs):
                m(xi)
    t = time_callable(run, proto, per_pass=copies)
    return dataclasses.replace(t, copies=copies)


class _Rotation(nn.Module):
    """Distinct copies of a layer, each on its own input, as one program."""

    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        self.copies = nn.ModuleList(mods)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m, x in zip(self.copies, xs))


def _time_layer_compiled(module: nn.Module, x: torch.Tensor, proto: Protocol, chain: bool) -> Timing:
    from .runtimes import get_runtime

    if proto.target != "cpu":
        raise ValueError(f"--runtime {proto.runtime}: times on the CPU only (--target cpu)")
    module = module.eval()
    copies = _copies(module, x, proto, chain)
    mods = [module] + [copy.deepcopy(module) for _ in range(copies - 1)]
    if chain:
        program, inputs = nn.Sequential(*mods), (x,)
    else:
        program, inputs = _Rotation(mods), (x, *(torch.randn_like(x) for _ in range(copies - 1)))
    compiled = get_runtime(proto.runtime).compile(program, inputs, proto.threads,
                                                  what=f"the layer ({type(module).__name__})")
    t = time_compiled(compiled, inputs, proto, per_pass=copies)
    return dataclasses.replace(t, copies=copies)


def time_compiled(compiled: Any, inputs: tuple[torch.Tensor, ...], proto: Protocol,
                  per_pass: int = 1) -> Timing:
    """Time a `runtimes.Compiled` program on `inputs` (prepared once, outside the timing)."""
    prepared = compiled.prepare(*inputs)
    return time_callable(lambda: compiled.run(prepared), proto, per_pass=per_pass)


@torch.inference_mode()
def time_network(model: nn.Module, proto: Protocol, resolution: int = 224,
                 in_chans: int = 3) -> Timing:
    """Whole-network latency (ms per batch): the deployment scenario, one model run repeatedly
    (eager PyTorch; `measure_networks` compiles for the other runtimes)."""
    device = torch.device(proto.target)
    model = model.to(device).eval()
    x = torch.randn(proto.batch, in_chans, resolution, resolution, device=device)
    return time_callable(lambda: model(x), proto)
