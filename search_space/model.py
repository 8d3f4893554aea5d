"""The one builder: `ArchConfig` -> FasterNet-style network (training form).

Implements the PConv block of FasterNet (Chen et al., CVPR 2023, arXiv 2303.03667,
Sec. 3): a k x k conv on `width // n_div` channels, the rest passed through, then two
pointwise convs (BN + activation between them) and a residual. Module names follow
timm's `fasternet.py`, so for a preset our `state_dict` loads into
`timm.create_model('fasternet_<v>')` with `strict=True`, and the reverse.

Generalizations over timm: per-stage partial ratio, MLP ratio and kernel size, and
arbitrary widths (each merge maps the previous stage's width to the next).
"""

# No `from __future__ import annotations` here: torch.fx copies `forward`'s annotations into the
# code it generates, and TorchScript cannot read a string annotation there (timm's FX tests).
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    Linear,
    SelectAdaptivePool2d,
    calculate_drop_path_rates,
    get_device_dtype,
    trunc_normal_,
)
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from .arch import ArchConfig

__all__ = ["PConvFasterNet", "PartialConv", "MLPBlock", "FasterNetStage", "PatchEmbed",
           "PatchMerging", "build_model", "act_layer"]


def act_layer(name: str) -> type[nn.Module]:
    """The activation module class for an `ArchConfig.act` name."""
    return {"gelu": nn.GELU, "relu": nn.ReLU}[name]


class PartialConv(nn.Module):
    """PConv: a k x k conv on the first `dim // n_div` channels; the rest pass through."""

    def __init__(self, dim: int, n_div: int, kernel_size: int = 3, *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.dim_conv3 = dim // n_div
        self.dim_untouched = dim - self.dim_conv3
        # Named `partial_conv3` (timm's name) whatever the kernel, so weights move between the two.
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, kernel_size, 1,
                                       kernel_size // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(x1), x2), 1)


class MLPBlock(nn.Module):
    """FasterNet block: PConv -> 1x1 conv -> BN -> act -> 1x1 conv, plus the shortcut."""

    def __init__(self, dim: int, n_div: int, mlp_ratio: float, kernel_size: int, act: str,
                 drop_path: float = 0.0, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False, **dd),
            nn.BatchNorm2d(hidden, **dd),
            act_layer(act)(),
            nn.Conv2d(hidden, dim, 1, bias=False, **dd),
        )
        self.spatial_mixing = PartialConv(dim, n_div, kernel_size, **dd)
        self.layer_scale = None  # timm's attribute; FasterNet variants use no layer scale
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))


class PatchEmbed(nn.Module):
    """Stem: non-overlapping patch_size x patch_size conv + BN."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=False,
                              device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(embed_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PatchMerging(nn.Module):
    """Merging layer: non-overlapping conv from one stage's width to the next + BN."""

    def __init__(self, in_dim: int, out_dim: int, patch_size: int, *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, out_dim, patch_size, patch_size, bias=False,
                                   device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class FasterNetStage(nn.Module):
    """Optional merge (all stages but the first) followed by `depth` blocks (timm's `Block`)."""

    def __init__(self, arch: ArchConfig, i: int, drop_path: list[float], *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        dim = arch.widths[i]
        self.blocks = nn.Sequential(*[
            MLPBlock(dim, arch.n_divs[i], arch.mlp_ratios[i], arch.kernel_sizes[i], arch.act,
                     drop_path[j], **dd)
            for j in range(arch.depths[i])
        ])
        self.downsample = (PatchMerging(arch.widths[i - 1], dim, arch.merge_size, **dd) if i > 0
                           else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        # One return per branch: TorchScript compiles both, and checkpoint_seq is never scripted.
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x


class PConvFasterNet(nn.Module):
    """A FasterNet-style classifier built from an `ArchConfig`, with timm's model API."""

    def __init__(self, arch: ArchConfig, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)  # timm's factory kwargs (e.g. device="meta")
        self.arch = arch
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_stages = arch.num_stages
        self.patch_embed = PatchEmbed(in_chans, arch.widths[0], arch.patch_size, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(arch.depths), stagewise=True)
        self.stages = nn.Sequential(*[FasterNetStage(arch, i, dpr[i], **dd)
                                      for i in range(arch.num_stages)])
        self.feature_info = [dict(num_chs=w, reduction=r, module=f"stages.{i}")
                             for i, (w, r) in enumerate(zip(arch.widths, arch.strides))]
        self.num_features = arch.widths[-1]
        self.head_hidden_size = arch.feature_dim
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(self.num_features, arch.feature_dim, 1, 1, 0, bias=False, **dd)
        self.act = act_layer(arch.act)()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = (Linear(arch.feature_dim, num_classes, **dd) if num_classes > 0
                           else nn.Identity())
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as timm's FasterNet (truncated normal, std 0.02; zero biases).
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+).downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^conv_head", (99999,)),
        ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None,
                         device: Any = None, dtype: Any = None) -> None:
        """A new head; its weights follow the model's device and dtype unless given."""
        dd = get_device_dtype(self, device=device, dtype=dtype)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = (Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0
                           else nn.Identity())
        for m in (self.global_pool, self.flatten, self.classifier):
            m.train(self.training)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Final features plus the outputs of the selected stages (timm's API)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: {output_fmt!r} is not supported; use 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.patch_embed(x)
        # TorchScript cannot slice a Sequential, so a scripted model runs every stage.
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of `indices` (and the head); timm's API.

        `prune_norm` is accepted for timm's signature; this network has no final norm.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:  # features now end at the last kept stage; the head is sized for the last one
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.conv_head = nn.Identity()  # the pre-logits conv is part of the head
            self.act = nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.act(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(arch: ArchConfig, num_classes: int = 1000, in_chans: int = 3,
                drop_path_rate: float = 0.0, **kwargs: Any) -> PConvFasterNet:
    """Build the training-form network for `arch` (see `fuse` for the inference form)."""
    if not isinstance(arch, ArchConfig):
        raise TypeError(f"arch: expected an ArchConfig, got {type(arch).__name__} "
                        "(load one with ArchConfig.from_file or take one from PRESETS)")
    return PConvFasterNet(arch, in_chans=in_chans, num_classes=num_classes,
                          drop_path_rate=drop_path_rate, **kwargs)
