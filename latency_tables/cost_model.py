"""A per-operator roofline cost model for any PyTorch model, for devices we cannot reach.

The roofline model (Williams, Waterman and Patterson, "Roofline: an insightful visual
performance model for multicore architectures", CACM 2009) bounds an operator's time by its
arithmetic (FLOPs over the attainable compute rate) and by its memory traffic (bytes over
the attainable bandwidth). Like nn-Meter (Zhang et al., MobiSys 2021) we predict at the
level of kernels and sum, but from a handful of fitted device constants instead of per-kernel
regressors, so that ~20 published whole-network latencies (FasterNet, Chen et al., CVPR
2023) suffice to calibrate a device.

Tracing. `trace(model, x)` runs the model once at batch 1 under a `TorchDispatchMode` and
records every ATen operator that reaches the backend (after autograd decompositions):
its kind, multiply-accumulates (MACs, the paper's and fvcore's "FLOPs"), the bytes of
weights (parameters and buffers) and of activations it reads and writes (fp32, each storage
once per operator), the conv group count and the innermost module that issued it. View
operators (reshape, permute, slicing, expand, `_unsafe_view`, ...) move no data and are
dropped. A kernel that makes a non-contiguous input contiguous before it runs (LayerNorm,
GroupNorm, softmax: ATen's `expect_contiguous`) pays for that copy, which the dispatcher does
not see: its bytes are added to the kernel's (MobileViT's LayerNorms after the unfold).
BatchNorm whose input is a convolution's output is dropped as folded into that conv, as
the paper did for every latency it reports. Activation bytes and MACs scale with the batch,
weights do not, so one trace serves every batch size.

Cost of one operator i of kind k at batch b (seconds):

    compute_i = b * MACs_i / P_k
    memory_i  = (b * act_bytes_i + weight_bytes_i) / BW          (eltwise: / (BW * e_elt))
    memory_i  = r_act * (b * act_bytes_i) / (BW * e_elt)          (act: erf, GELU)
    memory_i  = r_exp * (b * act_bytes_i) / (BW * e_elt)          (exp: SiLU, softmax, ...)
    t_i = max(compute_i, memory_i) + o + o_g * groups_i + o_m * matrices_i   (CPU / ARM)
    t_i = max(compute_i, memory_i, o) + o_k                       (GPU: launches overlap)

with per-kind attainable rates P_k for k in `COMPUTE_KINDS` (conv: dense k x k convolution,
gemm: 1x1 conv / linear / weight matmul, matmul: activation-activation products such as
attention, dwconv, gconv, pool), one bandwidth BW, an efficiency e_elt of memory-bound
operators (elementwise, normalization, pooling, copies) relative to BW, a per-operator
overhead o (dispatch, threading; on the GPU the floor of a kernel's duration) and a
per-group overhead o_g of grouped and depthwise convolutions (eager PyTorch loops over
groups on CPUs: the paper's operator table shows a Cortex-A72 depthwise conv getting
*slower* as channels grow at constant FLOPs), and a per-matrix overhead o_m of batched
activation matmuls (`bmm`: attention's q k^T and attn v) on CPUs, where eager PyTorch 1.x
splits a batched fp32 matmul above its tiny-matrix kernel into one GEMM call per matrix
(`bmm_out_or_baddbmm_` in ATen's LinearAlgebra.cpp, "split along batch dimension"; recalled,
not re-read here: no network): Swin's 49-token windows make ~1800
such calls per image, each a few microseconds of work.

Activations. A transcendental activation costs a measured multiple of an elementwise
operator moving the same bytes (ReLU): r_act for the erf class (exact GELU: kind `act`),
r_exp for the exp class (SiLU, sigmoid, tanh, and softmax, whose exp dominates its passes:
kind `exp`). The two differ by up to 2.7x on a CPU without a vectorized erf (a SIMD exp is
common, a SIMD erf is not). Neither is fitted: no published row separates GELU from ReLU at
equal architecture, so both are measured constants with their source in the profile
(`act_cost_ratio`, `exp_cost_ratio`, `act_cost_source`; evidence in
`benchmarks/reports/activation_cost.md`).

GPU small kernels. At batch 32 each kernel pays a launch gap o_k that the next kernel does
not hide (dependent kernels in eager PyTorch). An occupancy factor for kernels of small
reduction depth was tried and removed: the published rows left it free (in-sample it sat
at the depth of a 3x3 depthwise conv, where it does nothing) and in leave-one-out it traded
off against the depthwise rate, moving MobileNetV2's error between +26 and +68 %.
A network's time is the sum over its operators; images/s at batch b is b / time.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["COMPUTE_KINDS", "MAC_KINDS", "OP_KINDS", "DeviceProfile", "OpTrace", "trace", "op_times",
           "predict_ms"]

#: Kinds with a compute roof of their own (`pool` counts element operations x window).
COMPUTE_KINDS = ("conv", "gemm", "matmul", "dwconv", "gconv", "pool")
#: Kinds whose `macs` are multiply-accumulates (the others count element operations).
MAC_KINDS = ("conv", "gemm", "matmul", "dwconv", "gconv")
#: All operator kinds; `act` (erf: GELU), `exp` (exp / tanh: SiLU, sigmoid, softmax) and
#: `eltwise` are memory-bound.
OP_KINDS = COMPUTE_KINDS + ("act", "exp", "eltwise")
_KIND_INDEX = {k: i for i, k in enumerate(OP_KINDS)}
_GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}
_SDPA = "scaled_dot_product"
#: Activations with an erf per element (exact GELU): kind `act`.
_ERF = {"gelu", "gelu_", "erf", "erf_"}
#: Activations and reductions with an exp (or tanh) per element: kind `exp` (SiLU, softmax).
_EXP = {"silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "_softmax", "softmax",
        "_log_softmax", "exp", "exp_", "mish", "elu", "elu_"}
#: Windowed pooling: cost per output element x window.
_POOL = {"avg_pool2d", "max_pool2d", "max_pool2d_with_indices"}
#: Allocation and metadata operators: no data is read, no kernel worth counting.
#: Kernels that copy a non-contiguous input to a contiguous buffer first (ATen's
#: `expect_contiguous`), a copy the dispatcher does not see: its bytes are added to theirs.
_CONTIGUOUS_INPUT = {"native_layer_norm", "native_group_norm", "_softmax", "_log_softmax"}
#: `_unsafe_view` is a view that autograd does not track (`reshape` after a copy): no data.
_FREE_OPS = {"empty", "empty_like", "zeros", "zeros_like", "ones", "lift_fresh", "detach",
             "_unsafe_view", "_reshape_alias", "alias",
             "_to_copy_noop", "_local_scalar_dense", "sym_size", "sym_stride", "new_empty",
             "empty_strided", "scalar_tensor", "arange", "full"}


@dataclasses.dataclass(frozen=True)
class OpTrace:
    """The operators of one forward pass at batch 1, one row each (a DataFrame).

    Columns: `module` (innermost issuing module), `op` (ATen name), `kind`, `macs`,
    `act_bytes`, `weight_bytes`, `groups`, `out_elems` (elements of the first output).
    """

    ops: pd.DataFrame

    @property
    def macs(self) -> float:
        """Total multiply-accumulates at batch 1 (element operations of act/pool excluded)."""
        return float(self.ops.loc[self.ops["kind"].isin(MAC_KINDS), "macs"].sum())

    def to_csv(self, path: str | Path) -> None:
        self.ops.to_csv(path, index=False)

    @classmethod
    def from_csv(cls, path: str | Path) -> OpTrace:
        ops = pd.read_csv(path, keep_default_na=False)
        if "out_elems" not in ops:  # traces written before the column
            ops["out_elems"] = 0.0
        return cls(ops)


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of data `t` touches: its elements, capped by its storage (expand views)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    def __init__(self, weights: set[int], stack: list[str]) -> None:
        super().__init__()
        self.weights, self.stack = weights, stack
        self.rows: list[dict[str, Any]] = []
        self.conv_outputs: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view:
            self._record(func, args, kwargs, out)
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = func.overloadpacket.__name__
        if name in _FREE_OPS:
            return
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if "batch_norm" in name and ins and _key(ins[0]) in self.conv_outputs:
            return  # folded into the conv that produced its input
        seen: set[int] = set()
        act = weight = 0
        for t in ins:
            if _key(t) in seen or t.numel() <= 1:
                continue
            seen.add(_key(t))
            if _key(t) in self.weights:
                weight += _nbytes(t)
            else:
                act += _nbytes(t)
        act += sum(_nbytes(t) for t in outs)
        if name in _CONTIGUOUS_INPUT and ins and not ins[0].is_contiguous():
            act += 2 * _nbytes(ins[0])  # the hidden copy: read strided, write contiguous
        macs, groups, kind = 0.0, 1, "eltwise"
        if "convolution" in name and len(ins) >= 2:
            x, w, o = ins[0], ins[1], outs[0]
            groups = int(args[8]) if len(args) > 8 else 1
            macs = float(o.numel() * w[0].numel())
            ksize = math.prod(w.shape[2:])
            if groups == 1:
                kind = "conv" if ksize > 1 else "gemm"
            else:
                kind = "dwconv" if groups == x.shape[1] else "gconv"
            self.conv_outputs.add(_key(o))
        elif name in _GEMM_OPS:
            a, b = (ins[-2], ins[-1])
            macs = float(outs[0].numel() * a.shape[-1])
            kind = "gemm" if (_key(a) in self.weights or _key(b) in self.weights) else "matmul"
            if kind == "matmul" and a.dim() == 3:
                groups = int(a.shape[0])  # matrices in the batch (bmm / baddbmm)
        elif _SDPA in name:
            q, k = ins[0], ins[1]
            macs = float(2 * q.numel() * k.shape[-2])
            kind = "matmul"
        elif (name in _ERF or name in _EXP) and outs:
            macs, kind = float(outs[0].numel()), ("act" if name in _ERF else "exp")
        elif name in _POOL and outs:
            window = args[1] if len(args) > 1 else (1,)
            window = [window] * 2 if isinstance(window, int) else list(window)
            macs, kind = float(outs[0].numel() * math.prod(window)), "pool"
        self.rows.append({"module": self.stack[-1] if self.stack else "", "op": name,
                          "kind": kind, "macs": macs, "act_bytes": float(act),
                          "weight_bytes": float(weight), "groups": groups,
                          "out_elems": float(outs[0].numel()) if outs else 0.0})


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor) -> OpTrace:
    """Record the operators of `model(x)` (eval mode, batch 1 expected; see module doc)."""
    if x.shape[0] != 1:
        raise ValueError(f"trace: batch {x.shape[0]}; trace at batch 1 (costs scale with batch)")
    model = model.eval()
    weights = {_key(t) for t in (*model.parameters(), *model.buffers())}
    stack: list[str] = []
    handles = []

    def push(name: str):  # type: ignore[no-untyped-def]
        return lambda _m, _i: stack.append(name)  # returns None: the input is left as is

    def pop(_m: nn.Module, _i: Any, _o: Any) -> None:
        stack.pop()

    for mname, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(push(mname)))
        handles.append(m.register_forward_hook(pop))
    rec = _Recorder(weights, stack)
    try:
        with rec:
            model(x)
    finally:
        for h in handles:
            h.remove()
    cols = ["module", "op", "kind", "macs", "act_bytes", "weight_bytes", "groups", "out_elems"]
    return OpTrace(pd.DataFrame(rec.rows, columns=cols))


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Fitted constants of one device (see the module docstring for the formula).

    Units: `rates_gmacs` G multiply-accumulates/s per compute kind, `bandwidth_gbs` GB/s,
    `overhead_us`, `group_overhead_us`, `matmul_overhead_us` (per matrix of a batched
    matmul) and `kernel_overhead_us` microseconds; `batch` is the
    protocol's batch. `act_cost_ratio` and `exp_cost_ratio` (time of an erf / exp-class
    activation over ReLU's on the same tensor) are measured, not fitted, and
    `act_cost_source` names the measurement.
    """

    device: str
    batch: int
    rates_gmacs: dict[str, float]
    bandwidth_gbs: float
    eltwise_efficiency: float
    overhead_us: float
    group_overhead_us: float
    launches_overlap: bool
    act_cost_ratio: float = 1.0
    exp_cost_ratio: float = 1.0
    act_cost_source: str = "none: GELU taken at ReLU's cost"
    kernel_overhead_us: float = 0.0
    matmul_overhead_us: float = 0.0
    fit: dict[str, Any] = dataclasses.field(default_factory=dict)

    # --- a flat parameter vector (log space) for fitting
    def constant_names(self) -> tuple[str, ...]:
        """Names of the fitted constants, in `to_vector` order (`rate_<kind>` for rates).

        Only what the device's formula uses: the GPU form has no group overhead, the
        synchronous form no launch gap.
        """
        tail = (("kernel_overhead_us",) if self.launches_overlap
                else ("group_overhead_us", "matmul_overhead_us"))
        return tuple(f"rate_{k}" for k in COMPUTE_KINDS) + (
            "bandwidth_gbs", "eltwise_efficiency", "overhead_us") + tail

    def constants(self) -> dict[str, float]:
        """The fitted constants by name (`constant_names` order)."""
        return {n: float(self.rates_gmacs[n[5:]] if n.startswith("rate_") else getattr(self, n))
                for n in self.constant_names()}

    def to_vector(self) -> np.ndarray:
        v = np.asarray(list(self.constants().values()), float)
        return np.log(np.maximum(v, 1e-12))  # log(0) for a zeroed constant

    def with_vector(self, theta: np.ndarray, **fit: Any) -> DeviceProfile:
        named = dict(zip(self.constant_names(), np.exp(theta).tolist()))
        rates = {k: named.pop(f"rate_{k}") for k in COMPUTE_KINDS}
        return dataclasses.replace(self, rates_gmacs=rates, **named, fit=fit or self.fit)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceProfile:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        return cls.from_dict(json.loads(Path(path).read_text()))


class OpArrays:
    """Traces packed as flat arrays (one entry per operator) for fast repeated evaluation."""

    def __init__(self, traces: Iterable[OpTrace], batch: int) -> None:
        frames = [t.ops for t in traces]
        self.n = len(frames)
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        self.owner = np.repeat(np.arange(self.n), [len(f) for f in frames])
        self.kind = df["kind"].map(_KIND_INDEX).to_numpy(int)
        self.macs = df["macs"].to_numpy(float) * batch
        self.bytes = df["act_bytes"].to_numpy(float) * batch + df["weight_bytes"].to_numpy(float)
        grouped = np.isin(self.kind, [_KIND_INDEX["dwconv"], _KIND_INDEX["gconv"]])
        self.groups = np.where(grouped, df["groups"].to_numpy(float), 0.0)
        #: Matrices of a batched activation matmul (`groups` of a `matmul` row).
        self.matrices = np.where(self.kind == _KIND_INDEX["matmul"], df["groups"].to_numpy(float),
                                 0.0)

    def times_s(self, theta: np.ndarray, form: DeviceProfile) -> np.ndarray:
        """Per-operator seconds for log-constants `theta` (`form.constant_names()` order).

        `form` supplies what is not fitted (the formula's variant, `launches_overlap`).
        """
        c = dict(zip(form.constant_names(), np.exp(theta)))
        rates = np.array([c[f"rate_{k}"] for k in COMPUTE_KINDS] + [np.inf] * 3) * 1e9
        act, exp = self.kind == _KIND_INDEX["act"], self.kind == _KIND_INDEX["exp"]
        elt = (self.kind == _KIND_INDEX["eltwise"]) | act | exp
        bw = c["bandwidth_gbs"] * 1e9 * np.where(elt, c["eltwise_efficiency"], 1.0)
        compute = self.macs / rates[self.kind]
        ratio = np.where(act, form.act_cost_ratio, np.where(exp, form.exp_cost_ratio, 1.0))
        memory = self.bytes / bw * ratio
        if form.launches_overlap:
            return (np.maximum(np.maximum(compute, memory), c["overhead_us"] * 1e-6)
                    + c["kernel_overhead_us"] * 1e-6)
        return (np.maximum(compute, memory) + c["overhead_us"] * 1e-6
                + c["group_overhead_us"] * 1e-6 * self.groups
                + c["matmul_overhead_us"] * 1e-6 * self.matrices)

    def totals_ms(self, theta: np.ndarray, form: DeviceProfile) -> np.ndarray:
        """Per-trace milliseconds (ms per batch)."""
        return np.bincount(self.owner, self.times_s(theta, form), minlength=self.n) * 1e3


def op_times(tr: OpTrace, profile: DeviceProfile, batch: int | None = None) -> pd.DataFrame:
    """`tr.ops` plus `ms` (per operator, per batch of `batch`, default the profile's)."""
    arr = OpArrays([tr], profile.batch if batch is None else batch)
    return tr.ops.assign(ms=arr.times_s(profile.to_vector(), profile) * 1e3)


def predict_ms(tr: OpTrace, profile: DeviceProfile, batch: int | None = None) -> float:
    """Predicted time of the traced model, ms per batch (default: the profile's batch)."""
    return float(op_times(tr, profile, batch)["ms"].sum())
