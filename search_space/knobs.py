"""The architecture knobs, declared once (`KNOBS`): everything else about a knob derives from here.

A `Knob` is one architecture parameter of a FasterNet-style network (Chen et al., CVPR 2023,
arXiv 2303.03667): its `ArchConfig` field, its file key (the official `cfg/fasternet_*.yaml`
name where one exists), its Optuna parameter name, its type, whether it takes one value per
stage, its default and its validation rule. From `KNOBS` derive:

- `ArchConfig`: its fields, their validation, the file form, the canonical id and `str`;
- `SearchSpace`: the knob names a space file may list, their defaults, the Optuna parameter
  names (`<param>_s<i>` per stage, `<param>` when tied or global);
- `latency_tables.layers`: the part of a block's layer key that the block knobs make
  (`block_tag`), and the block signatures a space enumerates.

How to add a knob: search_space/README.md, "How to add a knob".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ACTIVATIONS", "KNOBS", "Knob", "Rule", "as_float", "as_int", "at_least_one"]

#: Activations a network may use (name as stored in `ArchConfig.act`).
ACTIVATIONS = ("gelu", "relu")

#: A validation rule: (the knob's value, every knob's value in the same stage -- the global
#: knobs' included -- by field) -> why the value is illegal, or None.
Rule = Callable[[Any, Mapping[str, Any]], "str | None"]


def compact(value: float) -> int | float:
    """Integral floats print as ints (2.0 -> 2) so files stay short; the value is unchanged."""
    return int(value) if float(value).is_integer() else float(value)


def _number(value: Any) -> float:
    """`value` if it is a finite real number (not a bool); ValueError naming why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return value


def as_int(value: Any) -> int:
    """An integral number as int (2.0 -> 2); ValueError for 2.5, "2", True, inf."""
    if float(_number(value)) != int(value):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def as_float(value: Any) -> float:
    """A finite number as float; ValueError for "2", True, nan."""
    return float(_number(value))


def _activation(value: Any) -> str:
    name = str(value).lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {value!r}; choose one of {ACTIVATIONS}")
    return name


def at_least_one(value: Any, stage: Mapping[str, Any]) -> str | None:
    """Rule: a count or a size, >= 1."""
    return None if value >= 1 else f"{value} must be >= 1"


def _some_pconv_channel(n_div: int, stage: Mapping[str, Any]) -> str | None:
    if n_div < 1:
        return f"{n_div} must be >= 1"
    if stage["widths"] // n_div == 0:
        return (f"width {stage['widths']} // n_div {n_div} is 0; PConv needs at least one "
                "channel (lower n_div or widen)")
    return None


def _some_hidden_channel(ratio: float, stage: Mapping[str, Any]) -> str | None:
    if ratio > 0 and int(stage["widths"] * ratio) >= 1:
        return None
    return f"{ratio} gives no hidden channel at width {stage['widths']}; must be > 0"


def _odd(k: int, stage: Mapping[str, Any]) -> str | None:
    return None if k >= 1 and k % 2 == 1 else f"{k} must be odd and >= 1 (PConv keeps the spatial size)"


def _no_rule(value: Any, stage: Mapping[str, Any]) -> str | None:
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Knob:
    """One architecture knob.

    Args:
        field: `ArchConfig` field (plural for a per-stage knob: `n_divs`).
        key: key in architecture files (the official FasterNet cfg name where there is one).
        param: Optuna parameter name; a per-stage knob's is `<param>_s<i>` (`<param>` tied).
            Stored studies resume by these names: never rename one.
        type: the value's type (`int`, `float` or `str`); a per-stage field holds a tuple.
        per_stage: one value per stage (else one value for the network).
        default: the value where a file or a space leaves the knob out; None: required.
        parse: raw value -> value, ValueError naming why not (default: by `type`).
        check: the validation rule (`Rule`), applied per stage after parsing.
        doc: one line for `ArchConfig`'s docstring.
        label: name in `str(arch)`; "/" joins the value to the previous one (`patch=4/2`).
        collapse: `str(arch)` shows one value when every stage has it (`k=3`).
        file_form: value -> file value (default: floats print as ints when integral).
        block_tag: the knob shapes each FasterNet block: it is a `LayerSig` field named
            `param`, and the block's layer key carries `:<block_tag><value>`. Changing the
            tagged knobs changes the key format (`latency_tables.layers.LAYER_KEY_VERSION`).
        optional: a knob added after architectures were published: the constructor and files
            may leave it out, and at its default it is not written, so every existing file
            and `arch_id` stays the same. The original nine are not optional.
        example: a legal non-default value (one stage's, for a per-stage knob); the tests
            generated from `KNOBS` build networks with it.
    """

    field: str
    key: str
    param: str
    type: type
    per_stage: bool
    default: Any = None
    parse: Callable[[Any], Any] | None = None
    check: Rule = _no_rule
    doc: str
    label: str
    collapse: bool = True
    file_form: Callable[[Any], Any] | None = None
    block_tag: str | None = None
    optional: bool = False
    example: Any

    def __post_init__(self) -> None:
        if self.parse is None:
            parsers: dict[type, Callable[[Any], Any]] = {int: as_int, float: as_float}
            if self.type not in parsers:
                raise ValueError(f"{self.field}: a {self.type.__name__} knob needs a parse function")
            object.__setattr__(self, "parse", parsers[self.type])
        if self.file_form is None:
            object.__setattr__(self, "file_form", compact if self.type is float else _same)
        if self.optional and self.default is None:
            raise ValueError(f"{self.field}: an optional knob needs a default")

    @property
    def required(self) -> bool:
        """Files and spaces must give it (no default)."""
        return self.default is None

    def to_file(self, value: Any) -> Any:
        """The field's value in the file form (a list per stage)."""
        assert self.file_form is not None  # set in __post_init__
        if self.per_stage:
            return [self.file_form(v) for v in value]
        return self.file_form(value)


def _same(value: Any) -> Any:
    return value


#: Every architecture knob, in file order (per-stage knobs first, as the search space lists
#: them). `ArchConfig`'s fields, in this order, are exactly these.
KNOBS: tuple[Knob, ...] = (
    Knob(field="widths", key="embed_dim", param="width", type=int, per_stage=True,
         check=at_least_one, doc="channels per stage.", label="w", collapse=False, example=48),
    Knob(field="depths", key="depths", param="depth", type=int, per_stage=True,
         check=at_least_one, doc="FasterNet blocks per stage (>= 1).", label="d",
         collapse=False, example=3),
    Knob(field="n_divs", key="n_div", param="n_div", type=int, per_stage=True, default=4,
         check=_some_pconv_channel, label="n_div", block_tag="n", example=2,
         doc="partial ratio per stage as 1/n; PConv convolves `width // n` channels."),
    Knob(field="mlp_ratios", key="mlp_ratio", param="mlp_ratio", type=float, per_stage=True,
         default=2, check=_some_hidden_channel, label="mlp", block_tag="e", example=1.5,
         doc="hidden expansion of the two pointwise convs per stage."),
    Knob(field="kernel_sizes", key="kernel_size", param="kernel_size", type=int, per_stage=True,
         default=3, check=_odd, label="k", block_tag="k", example=5,
         doc="PConv kernel per stage (odd)."),
    Knob(field="act", key="act_layer", param="act", type=str, per_stage=False, default="gelu",
         parse=_activation, file_form=str.upper, label="act", block_tag="", example="relu",
         doc="activation, one of `ACTIVATIONS`."),
    Knob(field="feature_dim", key="feature_dim", param="feature_dim", type=int, per_stage=False,
         default=1280, check=at_least_one, label="feat", example=1024,
         doc="width of the 1x1 conv before the classifier."),
    Knob(field="patch_size", key="patch_size", param="patch_size", type=int, per_stage=False,
         default=4, check=at_least_one, label="patch", example=2,
         doc="stem stride (the stem is a patch_size x patch_size conv, stride patch_size)."),
    Knob(field="merge_size", key="patch_size2", param="merge_size", type=int, per_stage=False,
         default=2, check=at_least_one, label="/", example=3,
         doc="merging stride between stages."),
)
