"""`ArchConfig`: the one value that describes a FasterNet-style network.

FasterNet (Chen et al., CVPR 2023, "Run, Don't Walk: Chasing Higher FLOPS for Faster
Neural Networks", arXiv 2303.03667) stacks four stages of PConv blocks. The official
config files describe a network with uniform knobs (`embed_dim`, `n_div`, `mlp_ratio`,
doubling widths); an `ArchConfig` generalizes every knob to one value per stage.

File format (YAML or JSON, chosen by suffix). Key names follow the official
`cfg/fasternet_*.yaml` where they exist; every per-stage key takes a list (one value per
stage) or a scalar (the same value for every stage)::

    embed_dim: [40, 80, 160, 320]   # widths; a scalar means embed_dim * 2**i (official form)
    depths: [1, 2, 8, 2]
    n_div: 4                        # PConv touches width // n_div channels
    mlp_ratio: 2
    kernel_size: 3                  # PConv kernel (ours; the official code fixes 3)
    act_layer: GELU
    feature_dim: 1280
    patch_size: 4                   # stem stride
    patch_size2: 2                  # merging stride
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ArchConfig", "ACTIVATIONS"]

_log = logging.getLogger(__name__)

#: Activations a network may use (name as stored in `ArchConfig.act`).
ACTIVATIONS = ("gelu", "relu")

# Per-stage fields: ArchConfig field -> file key.
_STAGE_KEYS = {
    "widths": "embed_dim",
    "depths": "depths",
    "n_divs": "n_div",
    "mlp_ratios": "mlp_ratio",
    "kernel_sizes": "kernel_size",
}
_SCALAR_KEYS = {
    "act": "act_layer",
    "feature_dim": "feature_dim",
    "patch_size": "patch_size",
    "merge_size": "patch_size2",
}
# Official keys that describe the architecture but admit only what FasterNet itself uses.
_FIXED_OFFICIAL_KEYS = ("patch_stride", "patch_stride2", "norm_layer", "layer_scale_init_value")
# Official keys that are build-time or implementation choices, not architecture.
_BUILD_KEYS = ("model_name", "drop_path_rate", "pconv_fw_type")
# Official training keys close enough to an architecture key to pass for a typo of it
# (batch_size ~ patch_size); ignored like any training key, never reported as a typo.
_TRAINING_LOOKALIKES = ("batch_size",)
_ARCH_KEYS = tuple(_STAGE_KEYS.values()) + tuple(_SCALAR_KEYS.values())
_KNOWN_KEYS = _ARCH_KEYS + _FIXED_OFFICIAL_KEYS + _BUILD_KEYS


class ArchError(ValueError):
    """A bad architecture value or file; the message is one line naming what is wrong."""


def _fmt(value: float) -> int | float:
    """Integral floats print as ints (2.0 -> 2) so files stay short; the value is unchanged."""
    return int(value) if float(value).is_integer() else float(value)


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """A FasterNet-style network, one value per stage for every stage knob.

    Args:
        widths: channels per stage.
        depths: FasterNet blocks per stage (>= 1).
        n_divs: partial ratio per stage as 1/n; PConv convolves `width // n` channels.
        mlp_ratios: hidden expansion of the two pointwise convs per stage.
        kernel_sizes: PConv kernel per stage (odd).
        act: activation, one of `ACTIVATIONS`.
        feature_dim: width of the 1x1 conv before the classifier.
        patch_size: stem stride (the stem is a patch_size x patch_size conv, stride patch_size).
        merge_size: merging stride between stages.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    n_divs: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    kernel_sizes: tuple[int, ...]
    act: str = "gelu"
    feature_dim: int = 1280
    patch_size: int = 4
    merge_size: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Sequence):
            raise ArchError(f"widths: expected a list of numbers, got {self.widths!r}")
        n = len(self.widths)
        if n == 0:
            raise ArchError("widths: must name at least one stage, got ()")
        for name, cast in (("widths", int), ("depths", int), ("n_divs", int),
                           ("mlp_ratios", float), ("kernel_sizes", int)):
            raw = getattr(self, name)
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
                raise ArchError(f"{name}: expected a list of numbers, got {raw!r}")
            if len(raw) != n:
                raise ArchError(f"{name}: has {len(raw)} stages but widths has {n}; "
                                "every per-stage field needs one value per stage")
            values = tuple(_as_number(name, v, cast) for v in raw)
            object.__setattr__(self, name, values)
        for name in ("feature_dim", "patch_size", "merge_size"):
            object.__setattr__(self, name, _as_number(name, getattr(self, name), int))
        act = str(self.act).lower()
        if act not in ACTIVATIONS:
            raise ArchError(f"act: unknown activation {self.act!r}; choose one of {ACTIVATIONS}")
        object.__setattr__(self, "act", act)
        self._check_ranges()

    def _check_ranges(self) -> None:
        for i, w in enumerate(self.widths):
            if w < 1:
                raise ArchError(f"widths[{i}]: {w} must be >= 1")
            if self.n_divs[i] < 1:
                raise ArchError(f"n_divs[{i}]: {self.n_divs[i]} must be >= 1")
            if w // self.n_divs[i] == 0:
                raise ArchError(f"n_divs[{i}]: width {w} // n_div {self.n_divs[i]} is 0; "
                                "PConv needs at least one channel (lower n_div or widen)")
            if self.depths[i] < 1:
                raise ArchError(f"depths[{i}]: {self.depths[i]} must be >= 1")
            if not self.mlp_ratios[i] > 0 or int(w * self.mlp_ratios[i]) < 1:
                raise ArchError(f"mlp_ratios[{i}]: {self.mlp_ratios[i]} gives no hidden "
                                f"channel at width {w}; must be > 0")
            k = self.kernel_sizes[i]
            if k < 1 or k % 2 == 0:
                raise ArchError(f"kernel_sizes[{i}]: {k} must be odd and >= 1 "
                                "(PConv keeps the spatial size)")
        for name in ("feature_dim", "patch_size", "merge_size"):
            if getattr(self, name) < 1:
                raise ArchError(f"{name}: {getattr(self, name)} must be >= 1")

    # ----------------------------------------------------------------- derived values
    @property
    def num_stages(self) -> int:
        return len(self.widths)

    @property
    def strides(self) -> tuple[int, ...]:
        """Total downsampling factor at the output of each stage."""
        return tuple(self.patch_size * self.merge_size**i for i in range(self.num_stages))

    @property
    def arch_id(self) -> str:
        """Short stable id (file-name safe), a hash of the canonical form."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "fn-" + hashlib.blake2b(canon.encode(), digest_size=5).hexdigest()

    def __str__(self) -> str:
        def stages(values: Sequence[Any]) -> str:
            vs = [_fmt(v) if isinstance(v, float) else v for v in values]
            return str(vs[0]) if len(set(vs)) == 1 else "/".join(map(str, vs))

        return (f"FasterNet(w={'/'.join(map(str, self.widths))} d={'/'.join(map(str, self.depths))}"
                f" n_div={stages(self.n_divs)} mlp={stages(self.mlp_ratios)}"
                f" k={stages(self.kernel_sizes)} act={self.act} feat={self.feature_dim}"
                f" patch={self.patch_size}/{self.merge_size})")

    def replace(self, **changes: Any) -> ArchConfig:
        """A copy with some fields changed (validated like any new config)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """The per-stage file form (official key names), JSON/YAML serializable."""
        out: dict[str, Any] = {}
        for field, key in _STAGE_KEYS.items():
            out[key] = [_fmt(v) if field == "mlp_ratios" else v for v in getattr(self, field)]
        for field, key in _SCALAR_KEYS.items():
            out[key] = getattr(self, field)
        out["act_layer"] = self.act.upper()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> ArchConfig:
        """Build from the file form: per-stage lists or official uniform scalars.

        A uniform file (scalar `embed_dim`, like the official `cfg/fasternet_t0.yaml`) may
        carry training keys; they are ignored with a log note. In the per-stage form every
        key must be an architecture key.
        """
        if not isinstance(data, Mapping):
            raise ArchError(f"{source}: expected a mapping of architecture keys, "
                            f"got {type(data).__name__}")
        official = not isinstance(data.get("embed_dim"), (list, tuple))
        ignored = []
        for key in data:
            if key in _KNOWN_KEYS:
                continue
            close = ([] if key in _TRAINING_LOOKALIKES
                     else difflib.get_close_matches(str(key), _ARCH_KEYS, n=1, cutoff=0.75))
            if close or not official:
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ArchError(f"{source}: unknown architecture key {key!r}{hint}; "
                                f"known keys: {', '.join(_ARCH_KEYS)}")
            ignored.append(str(key))
        if ignored:
            _log.info("%s: ignoring non-architecture keys: %s", source, ", ".join(ignored))
        if "embed_dim" not in data:
            raise ArchError(f"{source}: missing key 'embed_dim' (the stage widths)")
        _check_fixed_official(data, source)

        if "depths" not in data:
            raise ArchError(f"{source}: missing key 'depths' (blocks per stage)")
        depths = data["depths"]
        if not isinstance(depths, (list, tuple)):
            raise ArchError(f"{source}: depths must be a list, one value per stage; got {depths!r}")
        n = len(depths)
        kwargs: dict[str, Any] = {"depths": tuple(depths)}
        if official:
            e = _as_number("embed_dim", data["embed_dim"], int)
            kwargs["widths"] = tuple(e * 2**i for i in range(n))
        else:
            kwargs["widths"] = tuple(data["embed_dim"])
        defaults = {"n_divs": 4, "mlp_ratios": 2, "kernel_sizes": 3}
        for field, default in defaults.items():
            value = data.get(_STAGE_KEYS[field], default)
            kwargs[field] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
        for field, key in _SCALAR_KEYS.items():
            if key in data:
                kwargs[field] = data[key]
        try:
            return cls(**kwargs)
        except ArchError as e:
            raise ArchError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ArchConfig:
        """Load a YAML (.yaml/.yml) or JSON (.json) architecture file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ArchError(f"{path}: cannot read architecture file ({e.strerror})") from None
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArchError(f"{path}: malformed {path.suffix.lstrip('.') or 'yaml'} ({first})") from None
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> Path:
        """Write YAML or JSON by suffix; `from_file` gives back an equal config."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif path.suffix.lower() in (".yaml", ".yml"):
            text = f"# {self}\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
        else:
            raise ArchError(f"{path}: unknown suffix {path.suffix!r}; use .yaml, .yml or .json")
        path.write_text(text)
        return path


def _as_number(name: str, value: Any, cast: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ArchError(f"{name}: expected a finite number, got {value!r}")
    if cast is int and float(value) != int(value):
        raise ArchError(f"{name}: expected an integer, got {value!r}")
    return cast(value)


def _check_fixed_official(data: Mapping[str, Any], source: str) -> None:
    """Official knobs we accept only at the value FasterNet uses."""
    checks = {
        "patch_stride": ("patch_size", 4),
        "patch_stride2": ("patch_size2", 2),
    }
    for key, (size_key, default) in checks.items():
        if key in data and data[key] != data.get(size_key, default):
            raise ArchError(f"{source}: {key}={data[key]!r} differs from {size_key}="
                            f"{data.get(size_key, default)!r}; only non-overlapping patches "
                            "(stride == size) are supported")
    if "norm_layer" in data and str(data["norm_layer"]).upper() not in ("BN", "BATCHNORM"):
        raise ArchError(f"{source}: norm_layer={data['norm_layer']!r} is not supported; use BN")
    if data.get("layer_scale_init_value", 0) not in (0, 0.0, None):
        raise ArchError(f"{source}: layer_scale_init_value={data['layer_scale_init_value']!r} is "
                        "not supported; use 0 (no layer scale, as every FasterNet variant)")
