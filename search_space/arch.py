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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from .knobs import ACTIVATIONS, KNOBS, Knob, as_int, compact

__all__ = ["ArchConfig", "ACTIVATIONS", "knob_fields"]

_log = logging.getLogger(__name__)

# Official keys that describe the architecture but admit only what FasterNet itself uses.
_FIXED_OFFICIAL_KEYS = ("patch_stride", "patch_stride2", "norm_layer", "layer_scale_init_value")
# Official keys that are build-time or implementation choices, not architecture.
_BUILD_KEYS = ("model_name", "drop_path_rate", "pconv_fw_type")
# Official training keys close enough to an architecture key to pass for a typo of it
# (batch_size ~ patch_size); ignored like any training key, never reported as a typo.
_TRAINING_LOOKALIKES = ("batch_size",)


class ArchError(ValueError):
    """A bad architecture value or file; the message is one line naming what is wrong."""


_T = TypeVar("_T")


def knob_fields(knobs: tuple[Knob, ...]) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: a frozen, keyword-only dataclass with one field per knob, in order.

    A required per-stage knob has no default; an optional per-stage knob defaults to None
    (its default in every stage); a global knob defaults to its default. The class keeps the
    knobs as `KNOBS` and its docstring gains their `doc` lines.
    """

    def decorate(cls: type[_T]) -> type[_T]:
        annotations = cls.__dict__.get("__annotations__", {})
        for knob in knobs:
            annotations[knob.field] = (f"tuple[{knob.type.__name__}, ...]" if knob.per_stage
                                       else knob.type.__name__)
            if knob.optional or not knob.per_stage:
                setattr(cls, knob.field, None if knob.per_stage else knob.default)
        cls.__annotations__ = annotations
        cls.KNOBS = knobs  # type: ignore[attr-defined]
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Args:\n" + "".join(
            f"        {k.field}: {k.doc}\n" for k in knobs)
        return dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    return decorate


@knob_fields(KNOBS)
class ArchConfig:
    """A FasterNet-style network, one value per stage for every stage knob.

    Its fields are the knobs of `search_space.knobs.KNOBS`, in that order, keyword-only.
    """

    KNOBS: ClassVar[tuple[Knob, ...]]

    def __post_init__(self) -> None:
        knobs = type(self).KNOBS
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Sequence):
            raise ArchError(f"widths: expected a list of numbers, got {self.widths!r}")
        n = len(self.widths)
        if n == 0:
            raise ArchError("widths: must name at least one stage, got ()")
        for knob in knobs:
            raw = getattr(self, knob.field)
            if knob.per_stage and raw is None and knob.optional:
                raw = (knob.default,) * n
            if not knob.per_stage:
                object.__setattr__(self, knob.field, _parse(knob.parse, knob.field, raw))
                continue
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
                raise ArchError(f"{knob.field}: expected a list of numbers, got {raw!r}")
            if len(raw) != n:
                raise ArchError(f"{knob.field}: has {len(raw)} stages but widths has {n}; "
                                "every per-stage field needs one value per stage")
            object.__setattr__(self, knob.field, tuple(_parse(knob.parse, knob.field, v) for v in raw))
        for i in range(n):
            stage = self._stage(i)
            for knob in knobs:
                why = knob.check(stage[knob.field], stage) if knob.per_stage else None
                if why:
                    raise ArchError(f"{knob.field}[{i}]: {why}")
        for knob in knobs:
            why = None if knob.per_stage else knob.check(getattr(self, knob.field), self._stage(0))
            if why:
                raise ArchError(f"{knob.field}: {why}")

    def _stage(self, i: int) -> dict[str, Any]:
        """Every knob's value in stage i, by field (a global knob's value in every stage)."""
        return {k.field: getattr(self, k.field)[i] if k.per_stage else getattr(self, k.field)
                for k in type(self).KNOBS}

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
        parts: list[str] = []
        for knob in type(self).KNOBS:
            value = getattr(self, knob.field)
            if knob.optional and _at_default(knob, value):
                continue  # as in the file form: a later knob leaves older strings unchanged
            shown = _show(knob, value)
            if knob.label == "/":
                parts[-1] += f"/{shown}"
            else:
                parts.append(f"{knob.label}={shown}")
        return f"FasterNet({' '.join(parts)})"

    def replace(self, **changes: Any) -> ArchConfig:
        """A copy with some fields changed (validated like any new config)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """The per-stage file form (official key names), JSON/YAML serializable; an optional
        knob at its default is left out."""
        out: dict[str, Any] = {}
        for knob in type(self).KNOBS:
            value = getattr(self, knob.field)
            if not (knob.optional and _at_default(knob, value)):
                out[knob.key] = knob.to_file(value)
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
        arch_keys = tuple(k.key for k in cls.KNOBS)
        official = not isinstance(data.get("embed_dim"), (list, tuple))
        ignored = []
        for key in data:
            if key in arch_keys or key in _FIXED_OFFICIAL_KEYS or key in _BUILD_KEYS:
                continue
            close = ([] if key in _TRAINING_LOOKALIKES
                     else difflib.get_close_matches(str(key), arch_keys, n=1, cutoff=0.75))
            if close or not official:
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ArchError(f"{source}: unknown architecture key {key!r}{hint}; "
                                f"known keys: {', '.join(arch_keys)}")
            ignored.append(str(key))
        if ignored:
            _log.info("%s: ignoring non-architecture keys: %s", source, ", ".join(ignored))
        if "embed_dim" not in data:
            raise ArchError(f"{source}: missing key 'embed_dim' (the stage widths)")
        _check_fixed_official(data, source)

        # widths and depths set the stages: `depths` their number, a scalar `embed_dim` the
        # official doubling widths.
        if "depths" not in data:
            raise ArchError(f"{source}: missing key 'depths' (blocks per stage)")
        depths = data["depths"]
        if not isinstance(depths, (list, tuple)):
            raise ArchError(f"{source}: depths must be a list, one value per stage; got {depths!r}")
        n = len(depths)
        kwargs: dict[str, Any] = {"depths": tuple(depths)}
        if official:
            e = _parse(as_int, "embed_dim", data["embed_dim"])
            kwargs["widths"] = tuple(e * 2**i for i in range(n))
        else:
            kwargs["widths"] = tuple(data["embed_dim"])
        for knob in cls.KNOBS:
            if knob.field in kwargs:
                continue
            if knob.per_stage:
                value = data.get(knob.key, knob.default)
                kwargs[knob.field] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
            elif knob.key in data:
                kwargs[knob.field] = data[knob.key]
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


def _parse(parse: Callable[[Any], Any] | None, name: str, raw: Any) -> Any:
    """`parse(raw)`, a knob's value from its raw form; ArchError naming `name` and why not."""
    assert parse is not None  # Knob.__post_init__ sets every knob's
    try:
        return parse(raw)
    except ValueError as e:
        raise ArchError(f"{name}: {e}") from None


def _at_default(knob: Knob, value: Any) -> bool:
    return all(v == knob.default for v in value) if knob.per_stage else value == knob.default


def _show(knob: Knob, value: Any) -> str:
    """The value as `str(arch)` shows it: stages joined by "/" (one value if `collapse` and
    all agree); integral floats as ints."""
    if not knob.per_stage:
        return str(compact(value) if isinstance(value, float) else value)
    shown = [compact(v) if isinstance(v, float) else v for v in value]
    return str(shown[0]) if knob.collapse and len(set(shown)) == 1 else "/".join(map(str, shown))


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
