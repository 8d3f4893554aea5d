"""Deployment forms: formulations of one trained network that give the same logits.

Which formulation of the FasterNet block (Chen et al., CVPR 2023, Sec. 3) is fastest depends
on the runtime that runs it, so a latency table records the form it timed and `search.py
export --runtime` writes that same form (`latency_tables.forms` chooses one by measurement):

- `timm`: the training form in eval mode, as timm's `fasternet` writes it (PConv as split,
  conv, concat; BatchNorm as modules, which ONNX Runtime and XNNPACK fold themselves).
- `sliced`: the timm form with PConv's split written as two channel slices (`x[:, :c]`,
  `x[:, c:]`) before the same concat: XNNPACK leaves `split_with_sizes` outside its delegate
  and takes slices and concat.
- `fused`: `fuse(model)`: BN folded, PConv's split/concat replaced by two GEMMs accumulating
  into one buffer, the shortcut fused into the last GEMM (`addmm`), merges as patch copy +
  GEMM. The fastest in eager PyTorch; XNNPACK does not take its in-place `addmm`s.
- `narrow`: standard conv modules with BN folded; PConv as a narrow k x k conv on the first
  `width // n_div` channels whose output enters the following 1x1 conv through its own slice
  of the weights, added to the 1x1 conv of the untouched channels: no split op and no concat,
  two channel slices instead. Stem, merges and head are plain convs (BN folded).

Every form exposes its layers under the names latency tables time them by (`patch_embed`,
`stages.i.downsample`, `stages.i.blocks.j`, and `DeployForm.head(net)`), so a table can time
each layer in the form the whole network runs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn

from .fuse import FusedBlock, _fold_bn, fuse
from .model import MLPBlock, PatchMerging, PConvFasterNet, act_layer

__all__ = ["DeployForm", "FORMS", "NarrowBlock", "SlicedPartialConv", "TimmHead", "deploy_form",
           "to_form"]


class TimmHead(nn.Module):
    """The head of the training form as one module: pool -> 1x1 conv -> act -> classifier
    (`PConvFasterNet.forward_head`), holding copies of the modules only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.global_pool = copy.deepcopy(model.global_pool)
        self.conv_head = copy.deepcopy(model.conv_head)
        self.act = copy.deepcopy(model.act)
        self.flatten = copy.deepcopy(model.flatten)
        self.classifier = copy.deepcopy(model.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.act(self.conv_head(self.global_pool(x)))))


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with `bn` (eval) folded into its weight and bias."""
    w, b = _fold_bn(conv.weight, bn)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, bias=True)
    out.weight.data.copy_(w)
    out.bias.data.copy_(b)
    return out


class NarrowBlock(nn.Module):
    """A FasterNet block without split or concat (the `narrow` form; BN folded).

    W1 @ cat(pconv(x1), x2) + b1 = W1a @ pconv(x1) + W1b @ x2 + b1: the PConv is a narrow conv
    on the channel slice x1, its output goes through W1a, the untouched slice x2 through W1b.
    """

    def __init__(self, block: MLPBlock, act: str) -> None:
        super().__init__()
        pconv = block.spatial_mixing.partial_conv3
        conv1, bn1, _, conv2 = block.mlp
        self.dc = block.spatial_mixing.dim_conv3
        dim, hidden = conv1.in_channels, conv1.out_channels
        w1, b1 = _fold_bn(conv1.weight, bn1)
        self.partial_conv3 = copy.deepcopy(pconv)
        self.conv_partial = nn.Conv2d(self.dc, hidden, 1, bias=True)
        self.conv_partial.weight.data.copy_(w1[:, :self.dc])
        self.conv_partial.bias.data.copy_(b1)
        # n_div 1: PConv touches every channel and nothing passes through untouched.
        self.conv_untouched = nn.Conv2d(dim - self.dc, hidden, 1, bias=False) if dim > self.dc else None
        if self.conv_untouched is not None:
            self.conv_untouched.weight.data.copy_(w1[:, self.dc:])
        self.act = act_layer(act)()
        self.conv2 = copy.deepcopy(conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_partial(self.partial_conv3(x[:, :self.dc]))
        if self.conv_untouched is not None:
            h = h + self.conv_untouched(x[:, self.dc:])
        return x + self.conv2(self.act(h))


class SlicedPartialConv(nn.Module):
    """PConv with its split written as two channel slices (the `sliced` form): the same
    concat, but no `split_with_sizes` op, which XNNPACK leaves outside its delegate."""

    def __init__(self, pconv: nn.Module) -> None:
        super().__init__()
        self.dim_conv3 = pconv.dim_conv3
        self.untouched = pconv.dim_untouched > 0  # n_div 1: nothing passes through
        self.partial_conv3 = copy.deepcopy(pconv.partial_conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.partial_conv3(x[:, :self.dim_conv3])
        return torch.cat((p, x[:, self.dim_conv3:]), 1) if self.untouched else p


def _sliced_block(block: MLPBlock, act: str = "") -> nn.Module:
    out = copy.deepcopy(block).eval()
    out.spatial_mixing = SlicedPartialConv(block.spatial_mixing)
    return out


def _sliced_network(model: PConvFasterNet) -> nn.Module:
    net = copy.deepcopy(model).eval()
    for stage in net.stages:
        for j, block in enumerate(stage.blocks):
            stage.blocks[j] = _sliced_block(block)
    return net


class _Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class NarrowFasterNet(nn.Module):
    """The `narrow` form of a network: plain convs with BN folded, `NarrowBlock` blocks."""

    def __init__(self, model: PConvFasterNet) -> None:
        super().__init__()
        self.arch = model.arch
        self.num_classes = model.num_classes
        self.patch_embed = _conv_bn(model.patch_embed.proj, model.patch_embed.norm)
        stages = []
        for stage in model.stages:
            ds = stage.downsample
            down = _conv_bn(ds.reduction, ds.norm) if isinstance(ds, PatchMerging) else nn.Identity()
            stages.append(_Stage(down, [NarrowBlock(b, model.arch.act) for b in stage.blocks]))
        self.stages = nn.Sequential(*stages)
        self.head = TimmHead(model)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.patch_embed(x)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeployForm:
    """One formulation: `network(model)` converts a whole (eval) training-form network,
    `block(block, act)` one block (what a table's block row times), `head(net)` the head layer
    of a converted network."""

    name: str
    description: str
    network: Callable[[PConvFasterNet], nn.Module]
    block: Callable[[MLPBlock, str], nn.Module]
    head: Callable[[nn.Module], nn.Module]


def _timm_network(model: PConvFasterNet) -> nn.Module:
    return model.eval()


#: name -> form; the keys are what tables record (`form`) and `--form` accepts.
FORMS: dict[str, DeployForm] = {f.name: f for f in (
    DeployForm(name="timm", description="training form in eval mode (split + conv + concat, BN modules)",
               network=_timm_network, block=lambda b, act: b.eval(), head=TimmHead),
    DeployForm(name="sliced", description="timm's form with PConv's split as two channel slices",
               network=_sliced_network, block=_sliced_block, head=TimmHead),
    DeployForm(name="fused", description="fuse(): BN folded, addmm GEMMs without split/concat",
               network=fuse, block=FusedBlock, head=lambda net: net.head),
    DeployForm(name="narrow", description="convs with BN folded; PConv as a narrow conv added "
                                          "through the following 1x1 (no split, no concat)",
               network=NarrowFasterNet, block=NarrowBlock, head=lambda net: net.head),
)}


def deploy_form(name: str) -> DeployForm:
    """The form of a name; a ValueError naming the known ones otherwise."""
    if name not in FORMS:
        raise ValueError(f"form: unknown deployment form {name!r}; choose one of {', '.join(FORMS)}")
    return FORMS[name]


@torch.no_grad()
def to_form(model: PConvFasterNet, form: str) -> nn.Module:
    """`model` (left unchanged, except `timm`, which is `model` itself in eval mode) in `form`."""
    if not isinstance(model, PConvFasterNet):
        raise TypeError(f"to_form: expected a PConvFasterNet (from build_model), got {type(model).__name__}")
    return deploy_form(form).network(model.eval()).eval()

