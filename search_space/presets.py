"""The six hand-designed FasterNet variants (Chen et al., CVPR 2023, Table 5), as `ArchConfig`s.

Widths are embed_dim x (1, 2, 4, 8); n_div 4, mlp_ratio 2, 3x3 PConv, feature_dim 1280,
patch 4, merge 2 for all (official `cfg/fasternet_*.yaml`, timm's `fasternet_*`).
"""

from __future__ import annotations

from .arch import ArchConfig

__all__ = ["PRESETS"]


def _variant(embed_dim: int, depths: tuple[int, ...], act: str) -> ArchConfig:
    return ArchConfig(widths=tuple(embed_dim * 2**i for i in range(4)), depths=depths,
                      n_divs=(4,) * 4, mlp_ratios=(2.0,) * 4, kernel_sizes=(3,) * 4, act=act,
                      feature_dim=1280, patch_size=4, merge_size=2)


#: name -> ArchConfig; names are timm's model names.
PRESETS: dict[str, ArchConfig] = {
    "fasternet_t0": _variant(40, (1, 2, 8, 2), "gelu"),
    "fasternet_t1": _variant(64, (1, 2, 8, 2), "gelu"),
    "fasternet_t2": _variant(96, (1, 2, 8, 2), "relu"),
    "fasternet_s": _variant(128, (1, 2, 13, 2), "relu"),
    "fasternet_m": _variant(144, (3, 4, 18, 3), "relu"),
    "fasternet_l": _variant(192, (3, 4, 18, 3), "relu"),
}
