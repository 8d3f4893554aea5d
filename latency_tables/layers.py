"""Layer signatures: the distinct layers an architecture, or a whole search space, is made of.

Latency prediction by summing per-layer latencies is nn-Meter's kernel-level idea (Zhang et
al., "nn-Meter: Towards Accurate Latency Prediction of Deep-Learning Model Inference on
Diverse Edge Devices", MobiSys 2021), applied to the four layer kinds of a fused FasterNet
(Chen et al., CVPR 2023): the stem, the merges, the FasterNet blocks and the head.

A layer's latency depends only on its signature:

- stem:  (input resolution, in_chans, width, patch_size)
- merge: (input resolution, in width, out width, merge_size)
- block: (stage resolution, width, n_div, mlp_ratio, kernel_size, act)
- head:  (final resolution, width, feature_dim, act, num_classes)

The block's knobs (n_div, mlp_ratio, kernel_size, act) are those of `search_space.knobs.KNOBS`
with a `block_tag`: each is a `LayerSig` field named by its Optuna name and adds
`:<block_tag><value>` to the block's key. `LAYER_KEY_VERSION` numbers the key format; a table
sidecar records it (`layer_key_version`, absent = 1) and `LatencyTable.load` refuses another.

Batch size and thread count are properties of a whole table, not of a row. `space_layers`
enumerates every signature a `SearchSpace` can produce from its choices (no sampling);
`arch_layers` lists the layers of one architecture with the module names of the fused model.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import torch
import torch.nn as nn

from search_space import ArchConfig, SearchSpace, build_model, fuse
from search_space.forms import DeployForm, deploy_form
from search_space.fuse import FusedBlock
from search_space.knobs import KNOBS, Knob
from search_space.model import MLPBlock

__all__ = ["LAYER_KEY_VERSION", "LayerSig", "KINDS", "arch_layers", "space_layers", "make_layer"]

#: Layer kinds, in network order.
KINDS = ("stem", "merge", "block", "head")

#: Version of the layer-key format. Bump it whenever `LayerSig.key` changes for a layer that
#: already has a key (a knob gains or loses a `block_tag`, a tag or a format changes): every
#: table must then be rebuilt, and tables of the old version fail on load, naming the command.
LAYER_KEY_VERSION = 1

#: The knobs that shape a block, in key order (`KNOBS` order).
BLOCK_KNOBS: tuple[Knob, ...] = tuple(k for k in KNOBS if k.block_tag is not None)


@dataclasses.dataclass(frozen=True)
class LayerSig:
    """One distinct layer. Unused fields stay 0 / "" for kinds that do not have them.

    `res` is the spatial size of the layer's input (square), `cin`/`cout` its input and
    output channels (for a block both are the width; for the head `cout` is feature_dim).
    """

    kind: str
    res: int
    cin: int
    cout: int
    stride: int = 0
    n_div: int = 0
    mlp_ratio: float = 0.0
    kernel_size: int = 0
    act: str = ""
    num_classes: int = 0

    @property
    def key(self) -> str:
        """Canonical, human-readable row key, e.g. `block:r56:c40:n4:e2:k3:gelu`."""
        if self.kind == "stem":
            return f"stem:r{self.res}:c{self.cin}-{self.cout}:p{self.stride}"
        if self.kind == "merge":
            return f"merge:r{self.res}:c{self.cin}-{self.cout}:m{self.stride}"
        if self.kind == "block":
            return f"block:r{self.res}:c{self.cin}" + "".join(
                f":{k.block_tag}{_key_text(getattr(self, k.param))}" for k in BLOCK_KNOBS)
        if self.kind == "head":
            return f"head:r{self.res}:c{self.cin}-{self.cout}:{self.act}:o{self.num_classes}"
        raise ValueError(f"kind: unknown layer kind {self.kind!r}; choose one of {KINDS}")

    def to_row(self) -> dict[str, object]:
        return {"key": self.key, **dataclasses.asdict(self)}

    @classmethod
    def from_row(cls, row: dict[str, object]) -> LayerSig:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: row[n] for n in names})  # type: ignore[arg-type]


def _key_text(value: object) -> str:
    """A knob's value in a layer key: floats in `g` format (2.0 -> 2, 1.5 -> 1.5)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _stage_resolutions(resolution: int, patch: int, merge: int, stages: int) -> list[int]:
    """Input resolution of each stage's blocks (floor division, as the fused patch convs)."""
    res = [resolution // patch]
    for _ in range(1, stages):
        res.append(res[-1] // merge)
    return res


def arch_layers(arch: ArchConfig, resolution: int = 224, in_chans: int = 3,
                num_classes: int = 1000) -> list[tuple[str, LayerSig]]:
    """(fused-model module name, signature) for every layer of `arch`, in forward order."""
    res = _stage_resolutions(resolution, arch.patch_size, arch.merge_size, arch.num_stages)
    out = [("patch_embed", LayerSig("stem", resolution, in_chans, arch.widths[0], arch.patch_size))]
    for i, w in enumerate(arch.widths):
        if i > 0:
            out.append((f"stages.{i}.downsample",
                        LayerSig("merge", res[i - 1], arch.widths[i - 1], w, arch.merge_size)))
        stage = {k.param: getattr(arch, k.field)[i] if k.per_stage else getattr(arch, k.field)
                 for k in BLOCK_KNOBS}
        block = LayerSig("block", res[i], w, w, **stage)
        out.extend((f"stages.{i}.blocks.{j}", block) for j in range(arch.depths[i]))
    out.append(("head", LayerSig("head", res[-1], arch.widths[-1], arch.feature_dim,
                                 act=arch.act, num_classes=num_classes)))
    return out


def _stage_widths(space: SearchSpace, i: int) -> tuple[int, ...]:
    if space.width_scale:
        scaled = (e * space.width_scale[i] for e in space.stage_choices["widths"][0])
        return tuple(int(w) for w in scaled)
    return tuple(space.stage_choices["widths"][i])


def _merge_pairs(space: SearchSpace, i: int) -> Iterator[tuple[int, int]]:
    """(in width, out width) pairs the merge into stage i can see."""
    prev, cur = _stage_widths(space, i - 1), _stage_widths(space, i)
    if space.width_scale:  # one embed_dim sets every stage's width
        yield from zip(prev, cur)
    elif "widths" in space.tie:
        yield from ((w, w) for w in cur)
    else:
        yield from itertools.product(prev, cur)


def space_layers(space: SearchSpace, resolution: int = 224, in_chans: int = 3,
                 num_classes: int = 1000) -> list[LayerSig]:
    """Every distinct layer `space` can produce at `resolution`, in a stable order.

    Enumerated from the space's choices (per stage: widths x the `BLOCK_KNOBS`' choices;
    merges from adjacent stage widths), so every architecture the space
    samples is covered. Tying only restricts combinations across stages, never the set of
    layers within a stage, except for widths (handled for merges).
    """
    g = space.global_choices
    n = space.num_stages
    seen: dict[str, LayerSig] = {}

    def add(sig: LayerSig) -> None:
        seen.setdefault(sig.key, sig)

    for patch, merge in itertools.product(g["patch_size"], g["merge_size"]):
        res = _stage_resolutions(resolution, patch, merge, n)
        for w in _stage_widths(space, 0):
            add(LayerSig("stem", resolution, in_chans, w, patch))
        for i in range(n):
            choices = [space.stage_choices[k.field][i] if k.per_stage else g[k.field]
                       for k in BLOCK_KNOBS]
            for w, *values in itertools.product(_stage_widths(space, i), *choices):
                knobs = {k.param: k.type(v) for k, v in zip(BLOCK_KNOBS, values)}
                add(LayerSig("block", res[i], w, w, **knobs))
            if i > 0:
                for cin, cout in _merge_pairs(space, i):
                    add(LayerSig("merge", res[i - 1], cin, cout, merge))
        for w, feat, act in itertools.product(_stage_widths(space, n - 1), g["feature_dim"], g["act"]):
            add(LayerSig("head", res[-1], w, feat, act=act, num_classes=num_classes))
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(seen.values(), key=lambda s: (order[s.kind], -s.res, s.key))


@torch.no_grad()
def make_layer(sig: LayerSig, batch: int = 1, form: str = "fused") -> tuple[nn.Module, torch.Tensor]:
    """The module of `sig` in deployment form `form` (`search_space.forms.FORMS`) and a random
    input for it.

    Stem, merge and head are taken from `fuse(build_model(...))` (or `to_form(..., form)`) of a
    minimal network that contains the layer, so they are exactly what the whole network runs in
    that form; a block is converted directly, as the whole network's conversion does, to skip
    the slow weight init of a whole model.
    """
    if form != "fused":
        return _make_layer_in(sig, batch, deploy_form(form))
    x = torch.randn(batch, sig.cin, sig.res, sig.res)
    if sig.kind == "stem":
        arch = ArchConfig(widths=(sig.cout,), depths=(1,), n_divs=(1,), mlp_ratios=(1,),
                          kernel_sizes=(1,), feature_dim=1, patch_size=sig.stride)
        return fuse(build_model(arch, num_classes=0, in_chans=sig.cin)).patch_embed, x
    if sig.kind == "merge":
        arch = ArchConfig(widths=(sig.cin, sig.cout), depths=(1, 1), n_divs=(1, 1),
                          mlp_ratios=(1, 1), kernel_sizes=(1, 1), feature_dim=1,
                          merge_size=sig.stride)
        return fuse(build_model(arch, num_classes=0)).stages[1].downsample, x
    if sig.kind == "block":  # what FusedFasterNet does per block, without timm's slow init
        block = MLPBlock(sig.cin, sig.n_div, sig.mlp_ratio, sig.kernel_size, sig.act).eval()
        return FusedBlock(block, sig.act).eval(), x
    if sig.kind == "head":
        arch = ArchConfig(widths=(sig.cin,), depths=(1,), n_divs=(1,), mlp_ratios=(1,),
                          kernel_sizes=(1,), act=sig.act, feature_dim=sig.cout)
        return fuse(build_model(arch, num_classes=sig.num_classes)).head, x
    raise ValueError(f"kind: unknown layer kind {sig.kind!r}; choose one of {KINDS}")


def _minimal_arch(sig: LayerSig) -> tuple[ArchConfig, dict[str, int]]:
    """A smallest network containing the stem, merge or head `sig`, and its build arguments."""
    one = dict(n_divs=(1,), mlp_ratios=(1,), kernel_sizes=(1,), feature_dim=1)
    if sig.kind == "stem":
        return ArchConfig(widths=(sig.cout,), depths=(1,), patch_size=sig.stride, **one), dict(
            num_classes=0, in_chans=sig.cin)
    if sig.kind == "merge":
        return ArchConfig(widths=(sig.cin, sig.cout), depths=(1, 1), n_divs=(1, 1), mlp_ratios=(1, 1),
                          kernel_sizes=(1, 1), feature_dim=1, merge_size=sig.stride), dict(num_classes=0)
    return ArchConfig(widths=(sig.cin,), depths=(1,), n_divs=(1,), mlp_ratios=(1,), kernel_sizes=(1,),
                      act=sig.act, feature_dim=sig.cout), dict(num_classes=sig.num_classes)


def _make_layer_in(sig: LayerSig, batch: int, form: DeployForm) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(batch, sig.cin, sig.res, sig.res)
    if sig.kind == "block":
        block = MLPBlock(sig.cin, sig.n_div, sig.mlp_ratio, sig.kernel_size, sig.act).eval()
        return form.block(block, sig.act).eval(), x
    if sig.kind not in KINDS:
        raise ValueError(f"kind: unknown layer kind {sig.kind!r}; choose one of {KINDS}")
    arch, kw = _minimal_arch(sig)
    net = form.network(build_model(arch, **kw).eval())
    if sig.kind == "stem":
        return net.patch_embed.eval(), x
    if sig.kind == "merge":
        return net.stages[1].downsample.eval(), x
    return form.head(net).eval(), x
