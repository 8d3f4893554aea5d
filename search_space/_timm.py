"""timm registration: `timm.create_model('pconv_fasternet', arch=...)` builds any ArchConfig."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .arch import ArchConfig, ArchError
from .model import PConvFasterNet
from .presets import PRESETS

__all__ = ["resolve_arch"]


def resolve_arch(arch: ArchConfig | Mapping[str, Any] | str | Path | None) -> ArchConfig:
    """An ArchConfig from an ArchConfig, a file-form dict, a preset name or a YAML/JSON path."""
    if arch is None:
        return PRESETS["fasternet_t0"]
    if isinstance(arch, ArchConfig):
        return arch
    if isinstance(arch, Mapping):
        return ArchConfig.from_dict(arch, source="arch dict")
    if isinstance(arch, (str, Path)):
        if str(arch) in PRESETS:
            return PRESETS[str(arch)]
        if not Path(arch).exists():
            raise ArchError(f"arch: {str(arch)!r} is neither a preset ({', '.join(PRESETS)}) "
                            "nor an existing .yaml/.json file")
        return ArchConfig.from_file(arch)
    raise ArchError(f"arch: expected an ArchConfig, a dict, a preset name or a file path, "
                    f"got {type(arch).__name__}")


default_cfgs = generate_default_cfgs({
    "pconv_fasternet": {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj",
        "classifier": "classifier", "paper_ids": "arXiv:2303.03667",
    },
})


@register_model
def pconv_fasternet(pretrained: bool = False, arch: Any = None, **kwargs: Any) -> PConvFasterNet:
    """Any FasterNet-style network; `arch` is an ArchConfig, dict, preset name or file path."""
    if pretrained:
        raise ValueError("pconv_fasternet has no pretrained weights (searched architectures "
                         "are trained from scratch); use pretrained=False")
    resolved = resolve_arch(arch)
    return build_model_with_cfg(
        PConvFasterNet, "pconv_fasternet", pretrained=False, arch=resolved,
        feature_cfg=dict(out_indices=tuple(range(resolved.num_stages)), flatten_sequential=True),
        **kwargs)
