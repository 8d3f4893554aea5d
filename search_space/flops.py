"""Parameters and FLOPs of an architecture (fvcore, the counter the FasterNet paper used)."""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch

from .arch import ArchConfig
from .model import build_model

__all__ = ["Complexity", "count_params", "params_and_flops"]


class Complexity(NamedTuple):
    params_m: float
    """Parameters, millions (classifier for `num_classes` included)."""
    flops_g: float
    """Multiply-adds counted by fvcore (as the paper's "FLOPs"), billions."""


@functools.lru_cache(maxsize=512)
def params_and_flops(arch: ArchConfig, resolution: int = 224, num_classes: int = 1000,
                     in_chans: int = 3) -> Complexity:
    """Params (M) and fvcore FLOPs (G) of `arch` at `resolution` x `resolution`."""
    # Built on the meta device and given uninitialized CPU storage: the count does not depend
    # on the weights, and the initialization would take most of the time.
    model = build_model(arch, num_classes=num_classes, in_chans=in_chans, device="meta")
    model = model.to_empty(device="cpu").eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore uses a deprecated jit API
        from fvcore.nn import FlopCountAnalysis  # slow import; only needed here

        counter = FlopCountAnalysis(model, torch.zeros(1, in_chans, resolution, resolution))
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = counter.total()
    return Complexity(params / 1e6, flops / 1e9)


def count_params(arch: ArchConfig, num_classes: int = 1000, in_chans: int = 3) -> int:
    """Parameter count of `build_model(arch, num_classes, in_chans)`, computed in closed form
    (microseconds; no model is built). BN contributes weight and bias per channel."""
    w = arch.widths
    total = in_chans * w[0] * arch.patch_size**2 + 2 * w[0]  # stem conv + BN
    for i in range(arch.num_stages):
        if i > 0:  # merge conv + BN
            total += w[i - 1] * w[i] * arch.merge_size**2 + 2 * w[i]
        dc = w[i] // arch.n_divs[i]
        hidden = int(w[i] * arch.mlp_ratios[i])
        block = dc * dc * arch.kernel_sizes[i] ** 2 + 2 * w[i] * hidden + 2 * hidden
        total += arch.depths[i] * block
    total += w[-1] * arch.feature_dim  # conv_head (no bias)
    if num_classes > 0:
        total += arch.feature_dim * num_classes + num_classes
    return total
