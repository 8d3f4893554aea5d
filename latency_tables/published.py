"""The FasterNet paper's published measurements, and the networks and operators behind them.

`profiles/published_latency.csv` and `profiles/published_operators.csv` are copies of the
paper's ImageNet comparison table and operator table (Chen et al., "Run, Don't Walk: Chasing
Higher FLOPS for Faster Neural Networks", CVPR 2023, arXiv 2303.03667; see
`../shared/data/README.md` for the protocol). This module rebuilds what was measured:

- `NETWORKS`: published row name -> builder (timm / torchvision name, or a FasterNet
  preset of `search_space`) and input resolution. MobileViT and EdgeNeXt are built at
  256x256: their published FLOPs match 256, not 224. BN is folded by the tracer.
- `NOT_BUILT`: rows that cannot be built here, and why.
- `operator_module(row)`: the paper's "10 stacked layers of one operator".

Attention is built in its explicit form (`q @ k^T`, softmax, `@ v`: timm's
`set_fused_attn(False)`), the only form the paper could time: its figures (arXiv v1,
7 March 2023) predate PyTorch 2.0 (15 March 2023), the first release with a fused
`scaled_dot_product_attention`. The explicit form writes the score matrix and runs a softmax
over it; the fused one does neither, which on MobileViT's 256-token attention is most of
the attention's cost.

`published_traces()` traces each of them once (`cost_model.trace`) and caches the operator
lists in `$PCONV_NAS_CACHE/traces` (default `~/.cache/pconv-nas/traces`), keyed by the torch
and timm versions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from .cost_model import OpTrace, trace

__all__ = ["DATA_DIR", "NETWORKS", "NOT_BUILT", "PublishedNet", "build_network",
           "load_networks", "load_operators", "operator_module", "published_traces"]

#: Each device's column in these files is its `DeviceSpec.published_column` (`devices.py`).
DATA_DIR = Path(__file__).with_name("profiles")


@dataclasses.dataclass(frozen=True)
class PublishedNet:
    """How to build a published row: `source` is "timm", "torchvision" or "preset"."""

    source: str
    name: str
    resolution: int = 224


NETWORKS: dict[str, PublishedNet] = {
    "ShuffleNetV2 x1.5": PublishedNet("torchvision", "shufflenet_v2_x1_5"),
    "ShuffleNetV2 x2": PublishedNet("torchvision", "shufflenet_v2_x2_0"),
    "MobileNetV2": PublishedNet("timm", "mobilenetv2_100"),
    "MobileViT-XXS": PublishedNet("timm", "mobilevit_xxs", 256),
    "MobileViT-XS": PublishedNet("timm", "mobilevit_xs", 256),
    "EdgeNeXt-XXS": PublishedNet("timm", "edgenext_xx_small", 256),
    "EdgeNeXt-XS": PublishedNet("timm", "edgenext_x_small", 256),
    "PoolFormer-S12": PublishedNet("timm", "poolformer_s12"),
    "PoolFormer-S36": PublishedNet("timm", "poolformer_s36"),
    "PoolFormer-M36": PublishedNet("timm", "poolformer_m36"),
    "PoolFormer-M48": PublishedNet("timm", "poolformer_m48"),
    "ResNet50": PublishedNet("timm", "resnet50"),
    "Swin-T": PublishedNet("timm", "swin_tiny_patch4_window7_224"),
    "Swin-S": PublishedNet("timm", "swin_small_patch4_window7_224"),
    "Swin-B": PublishedNet("timm", "swin_base_patch4_window7_224"),
    "ConvNeXt-S": PublishedNet("timm", "convnext_small"),
    "ConvNeXt-B": PublishedNet("timm", "convnext_base"),
    "FasterNet-T0": PublishedNet("preset", "fasternet_t0"),
    "FasterNet-T1": PublishedNet("preset", "fasternet_t1"),
    "FasterNet-M": PublishedNet("preset", "fasternet_m"),
    "FasterNet-L": PublishedNet("preset", "fasternet_l"),
}

_NO_PVT = "PVT v1 is not in timm 1.0 (only PVT v2, a different network); no network access"
_NO_CYCLE = "CycleMLP is not in timm 1.0 nor torchvision; no network access"
NOT_BUILT: dict[str, str] = {
    "PVT-Tiny": _NO_PVT, "PVT-Small": _NO_PVT, "PVT-Medium": _NO_PVT, "PVT-Large": _NO_PVT,
    "CycleMLP-B1": _NO_CYCLE, "CycleMLP-B2": _NO_CYCLE,
}


def load_networks() -> pd.DataFrame:
    """The published network table (one row per network; NaN where not measured)."""
    return pd.read_csv(DATA_DIR / "published_latency.csv")


def load_operators() -> pd.DataFrame:
    """The published operator table (10 stacked layers of one operator per row)."""
    return pd.read_csv(DATA_DIR / "published_operators.csv")


def is_fasternet(network: str) -> bool:
    return network.startswith("FasterNet")


def build_network(spec: PublishedNet) -> nn.Module:
    """The network of a published row, eval mode, random weights (latency needs no weights)."""
    if spec.source == "preset":
        from search_space import PRESETS, build_model

        return build_model(PRESETS[spec.name]).eval()
    if spec.source == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec.name)().eval()
    import timm
    from timm.layers import set_fused_attn, use_fused_attn

    fused = use_fused_attn()
    set_fused_attn(False)  # attention as matmul, softmax, matmul: see EXPLICIT_ATTENTION
    try:
        return timm.create_model(spec.name, pretrained=False).eval()
    finally:
        set_fused_attn(fused)


class _PConvSlicing(nn.Module):
    """PConv in the official repo's inference ("slicing") form: clone, conv in place."""

    def __init__(self, dim: int, n_div: int) -> None:
        super().__init__()
        self.dc = dim // n_div
        self.conv = nn.Conv2d(self.dc, self.dc, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()  # keeps the input intact for a shortcut, as the official code does
        x[:, :self.dc] = self.conv(x[:, :self.dc])
        return x


def operator_module(row: pd.Series) -> tuple[nn.Module, torch.Tensor]:
    """The stacked layers of a published operator row, and a batch-1 input."""
    c, h, w, g = int(row.channels), int(row.height), int(row.width), int(row.groups_or_ratio)
    op = str(row.operator)

    def layer() -> nn.Module:
        if op.startswith("pconv"):
            return _PConvSlicing(c, g)
        groups = c if op.startswith("dwconv") else (g if op.startswith("gconv") else 1)
        return nn.Conv2d(c, c, 3, 1, 1, groups=groups, bias=False)

    return nn.Sequential(*[layer() for _ in range(int(row.layers))]).eval(), torch.randn(1, c, h, w)


def operator_name(row: pd.Series) -> str:
    return f"{row.operator}@{row.channels}x{row.height}"


def _cache_dir() -> Path:
    import timm

    root = Path(os.environ.get("PCONV_NAS_CACHE", Path.home() / ".cache" / "pconv-nas"))
    # v2: traces carry `out_elems`; v5: explicit attention, `_unsafe_view` free, kind `exp`,
    # hidden contiguous copies, matrices of a bmm in `groups`
    return root / "traces" / f"v5-torch{torch.__version__}-timm{timm.__version__}"


def _cached(name: str, make: Callable[[], OpTrace]) -> OpTrace:
    path = _cache_dir() / (re.sub(r"[^A-Za-z0-9@.]+", "_", name) + ".csv")
    if path.exists():
        return OpTrace.from_csv(path)
    tr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tr.to_csv(path)
    return tr


def published_traces() -> tuple[dict[str, OpTrace], dict[str, OpTrace]]:
    """({network: trace}, {operator row name: trace}) of everything buildable (cached)."""
    torch.manual_seed(0)
    nets = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, spec in NETWORKS.items():
            def make(spec: PublishedNet = spec) -> OpTrace:
                x = torch.randn(1, 3, spec.resolution, spec.resolution)
                return trace(build_network(spec), x)

            nets[name] = _cached(name, make)
    ops = {}
    for _, row in load_operators().iterrows():
        ops[operator_name(row)] = _cached(operator_name(row), lambda row=row: trace(*operator_module(row)))
    return nets, ops
