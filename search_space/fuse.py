"""Deployment form: `fuse(model)` turns a trained `PConvFasterNet` into an inference network.

What changes (same logits within 1e-4 in fp32):
- BatchNorm is folded into the conv before it (stem, merges, first pointwise conv), as the
  FasterNet paper does for every latency it reports (arXiv 2303.03667, Sec. 4).
- PConv without the split/cat copy. The first pointwise conv over cat(pconv(x1), x2) is
  split by input channels, W1 @ cat(p, x2) = W1b @ x2 + W1a @ p, and both GEMMs
  accumulate into one buffer (BLAS beta=1), so the concatenated tensor is never built.
  The input stays untouched: it is the shortcut.
- The shortcut add is fused into the last pointwise conv: out = x + W2 @ h is one GEMM
  with the shortcut as its accumulator (beta=1), so there is no separate add pass.
- Merges (non-overlapping k x k, stride k convs) run as one patch copy plus a GEMM, which
  beats the convolution kernels at batch 1; the stem (3 input channels: the strided patch
  copy would dominate) stays a convolution.

Each layer stays a module of its own (`patch_embed`, `stages.i.downsample`,
`stages.i.blocks.j`, `head`) so latency tables can time layers in deployment form.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import ArchConfig
from .model import MLPBlock, PConvFasterNet

__all__ = ["fuse", "FusedFasterNet", "FusedStem", "FusedPatchConv", "FusedBlock", "FusedHead"]


def _fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BN into the preceding bias-free conv: returns (weight, bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = bn.bias - bn.running_mean * scale
    return w.detach().clone(), b.detach().clone()


def _activation(name: str):
    """In-place activation on a fresh buffer (the GEMM output is ours to overwrite)."""
    if name == "relu":
        return torch.relu_
    return F.gelu  # no in-place GELU in ATen; exact (erf) form, as nn.GELU()


class FusedStem(nn.Module):
    """Stem conv with folded BN."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.stride = conv.stride
        w, b = _fold_bn(conv.weight, bn)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride)


class FusedPatchConv(nn.Module):
    """Non-overlapping k x k, stride k conv with folded BN, as patch copy + GEMM."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.k = conv.kernel_size[0]
        w, b = _fold_bn(conv.weight, bn)
        self.out_chans = w.shape[0]
        self.register_buffer("weight", w.reshape(w.shape[0], -1).contiguous())
        self.register_buffer("bias", b.reshape(-1, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if n == 1:  # plain GEMM: no batch-broadcast of the weight
            return self._forward_one(x)
        k = self.k
        ho, wo = h // k, w // k
        if ho * k != h or wo * k != w:  # conv drops the remainder; so do we
            x = x[:, :, :ho * k, :wo * k]
        cols = x.reshape(n, c, ho, k, wo, k).permute(0, 1, 3, 5, 2, 4).reshape(n, c * k * k, ho * wo)
        out = torch.baddbmm(self.bias, self.weight.expand(n, -1, -1), cols)
        return out.view(n, self.out_chans, ho, wo)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        k = self.k
        ho, wo = h // k, w // k
        x = x[:, :, :ho * k, :wo * k]
        cols = x.reshape(c, ho, k, wo, k).permute(0, 2, 4, 1, 3).reshape(c * k * k, ho * wo)
        return torch.addmm(self.bias, self.weight, cols).view(1, self.out_chans, ho, wo)


class FusedBlock(nn.Module):
    """A FasterNet block with BN folded, no split/cat copy and the shortcut fused into a GEMM."""

    def __init__(self, block: MLPBlock, act: str) -> None:
        super().__init__()
        pconv = block.spatial_mixing.partial_conv3
        conv1, bn1, _, conv2 = block.mlp
        self.dc = block.spatial_mixing.dim_conv3
        self.padding = pconv.padding
        self.act = _activation(act)
        w1, b1 = _fold_bn(conv1.weight, bn1)
        w1 = w1.flatten(1)
        self.register_buffer("w_pconv", pconv.weight.detach().clone())
        self.register_buffer("w1_conv", w1[:, :self.dc].contiguous())
        self.register_buffer("w1_pass", w1[:, self.dc:].contiguous())
        self.register_buffer("b1", b1.reshape(-1, 1).contiguous())
        self.register_buffer("w2", conv2.weight.detach().flatten(1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.contiguous()
        if n == 1:  # plain GEMMs: no batch-broadcast of the weights
            return self._forward_one(x)
        flat = x.view(n, c, h * w)
        p = F.conv2d(x[:, :self.dc], self.w_pconv, None, 1, self.padding).view(n, self.dc, h * w)
        hidden = torch.baddbmm(self.b1, self.w1_pass.expand(n, -1, -1), flat[:, self.dc:])
        hidden.baddbmm_(self.w1_conv.expand(n, -1, -1), p)
        hidden = self.act(hidden)
        out = torch.baddbmm(flat, self.w2.expand(n, -1, -1), hidden)
        return out.view(n, c, h, w)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        flat = x.view(c, h * w)
        p = F.conv2d(x[:, :self.dc], self.w_pconv, None, 1, self.padding).view(self.dc, h * w)
        hidden = torch.addmm(self.b1, self.w1_pass, flat[self.dc:])
        hidden.addmm_(self.w1_conv, p)
        return torch.addmm(flat, self.w2, self.act(hidden)).view(1, c, h, w)


class FusedHead(nn.Module):
    """Global average pool -> 1x1 conv (a matmul on pooled features) -> act -> classifier."""

    def __init__(self, model: PConvFasterNet) -> None:
        super().__init__()
        self.pool_type = model.global_pool.pool_type
        self.global_pool = copy.deepcopy(model.global_pool)
        self.register_buffer("w_head", model.conv_head.weight.detach().flatten(1).clone())
        self.act = copy.deepcopy(model.act)
        self.classifier = copy.deepcopy(model.classifier)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.mean((2, 3))
        else:
            x = self.global_pool(x).flatten(1)
        x = self.act(F.linear(x, self.w_head))
        return x if pre_logits else self.classifier(x)


class FusedStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[FusedBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class FusedFasterNet(nn.Module):
    """Inference-only FasterNet: `forward`, `forward_features`, `forward_head` as timm's."""

    def __init__(self, model: PConvFasterNet) -> None:
        super().__init__()
        self.arch: ArchConfig = model.arch
        self.num_classes = model.num_classes
        self.patch_embed = FusedStem(model.patch_embed.proj, model.patch_embed.norm)
        stages = []
        for stage in model.stages:
            ds = stage.downsample
            down = (FusedPatchConv(ds.reduction, ds.norm) if not isinstance(ds, nn.Identity)
                    else nn.Identity())
            stages.append(FusedStage(down, [FusedBlock(b, model.arch.act) for b in stage.blocks]))
        self.stages = nn.Sequential(*stages)
        self.head = FusedHead(model)
        self.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.patch_embed(x)))


@torch.no_grad()
def fuse(model: PConvFasterNet) -> FusedFasterNet:
    """The deployment form of `model` (inference only; `model` itself is left unchanged)."""
    if not isinstance(model, PConvFasterNet):
        raise TypeError(f"fuse: expected a PConvFasterNet (from build_model), "
                        f"got {type(model).__name__}")
    return FusedFasterNet(model)
