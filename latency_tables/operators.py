"""The operator table of FasterNet (Chen et al., CVPR 2023, Table 1) on the current device.

Ten stacked layers of one 3x3 operator on one feature map (96x56x56, 192x28x28, 384x14x14,
768x7x7), batch 1 on CPU (32 on CUDA): regular conv, group conv (16 groups), depthwise conv
and PConv (r = 1/4: a regular conv on the first quarter of the channels, the rest untouched,
written in place as in deployment). Latency and achieved throughput (GFLOP/s; FLOPs are
multiply-adds, as the paper counts them) are reported next to the published figures, which
tells whether PConv's premise — a higher FLOP/s than DWConv at a fraction of the conv's
FLOPs — holds on this hardware.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from .measure import Protocol, time_callable

__all__ = ["OPERATORS", "FEATURE_MAPS", "OperatorTiming", "time_operators", "published_operators",
           "compare_operators"]

#: name -> (groups as a function of channels, share of channels convolved).
OPERATORS = {
    "conv3x3": (lambda c: 1, 1.0),
    "gconv3x3_g16": (lambda c: 16, 1.0),
    "dwconv3x3": (lambda c: c, 1.0),
    "pconv3x3_r4": (lambda c: 1, 0.25),
}
FEATURE_MAPS = ((96, 56), (192, 28), (384, 14), (768, 7))
LAYERS = 10  # the paper stacks 10 layers so that one pass is long enough to time


@dataclasses.dataclass(frozen=True)
class OperatorTiming:
    operator: str
    channels: int
    size: int
    ms: float
    iqr_ms: float
    flops_m_total: float
    gflops: float  # achieved G multiply-adds per second


def _stack(op: str, c: int, batch: int, device: torch.device):
    groups_of, share = OPERATORS[op]
    cp = int(c * share)
    g = groups_of(cp)
    weights = [torch.randn(cp, cp // g, 3, 3, device=device) * 0.05 for _ in range(LAYERS)]
    flops = LAYERS * cp * (cp // g) * 9  # per output pixel, times H*W*batch below

    def run(x: torch.Tensor) -> torch.Tensor:
        for w in weights:
            if cp == c:
                x = F.conv2d(x, w, None, 1, 1, 1, g)
            else:
                x[:, :cp] = F.conv2d(x[:, :cp], w, None, 1, 1, 1, g)
        return x

    return run, flops


@torch.inference_mode()
def time_operators(proto: Protocol | None = None) -> list[OperatorTiming]:
    """Time every operator on every feature map; ms per batch of `proto.batch`."""
    proto = proto or Protocol(min_time_s=0.5, min_repeats=20)
    device = torch.device(proto.target)
    if proto.target == "cpu":
        torch.set_num_threads(proto.threads)
    out = []
    for op in OPERATORS:
        for c, s in FEATURE_MAPS:
            run, flops_px = _stack(op, c, proto.batch, device)
            x = torch.randn(proto.batch, c, s, s, device=device)
            t = time_callable(lambda: run(x), proto)  # noqa: B023 (called right here)
            flops_m = flops_px * s * s * proto.batch / 1e6
            out.append(OperatorTiming(op, c, s, t.median_ms, t.iqr_ms, flops_m,
                                      flops_m / t.median_ms))
    return out


def published_operators() -> pd.DataFrame | None:
    """The paper's operator table (`shared/data/published_operators.csv`), if found."""
    root = Path(__file__).resolve().parents[1]
    for base in (root / "shared", root.parent / "shared"):
        path = base / "data" / "published_operators.csv"
        if path.exists():
            return pd.read_csv(path)
    return None


def compare_operators(timings: list[OperatorTiming], target: str = "cpu") -> pd.DataFrame:
    """Our timings next to the published ones for `target` ("cpu" -> cpu, "cuda" -> gpu)."""
    ours = pd.DataFrame([dataclasses.asdict(t) for t in timings])
    pub = published_operators()
    if pub is None:
        return ours
    col = "gpu" if target == "cuda" else "cpu"
    keep = ["operator", "channels", f"{col}_gflops"] + ([f"{col}_ms"] if col == "cpu" else [f"{col}_fps"])
    pub = pub[keep].rename(columns={f"{col}_ms": "paper_ms", f"{col}_gflops": "paper_gflops",
                                    f"{col}_fps": "paper_fps"})
    return ours.merge(pub, on=["operator", "channels"], how="left")
