"""`SearchSpace`: the declarative space of FasterNet-style networks (one YAML file).

Every architecture knob lists its choices, per stage or for all stages at once::

    stages: 4
    widths:                         # per-stage choices (a list per stage) ...
      - [32, 40, 48, 64]
      - [64, 80, 96, 128]
      - [128, 160, 192, 256]
      - [256, 320, 384, 512]
    # ... or timm's global knob: widths = embed_dim * scale[i]
    # widths: {embed_dim: [32, 40, 48, 64], scale: [1, 2, 4, 8]}
    depths: [[1, 2], [1, 2], [4, 8], [1, 2]]
    n_divs: [2, 4, 8, 16]           # one flat list: the same choices in every stage
    mlp_ratios: [2, 3]
    kernel_sizes: [3]
    act: [gelu, relu]
    feature_dim: [1280]
    patch_size: [4]
    merge_size: [2]
    tie: [mlp_ratios]               # knobs sampled once and shared by every stage
    constraints: {max_params_m: 20} # also min_params_m; checked analytically, no model built

The knobs, their defaults and their Optuna parameter names come from `search_space.knobs.KNOBS`
(through `SearchSpace.arch_class`). Optuna parameter names are stable: `width_s{i}`,
`depth_s{i}`, `n_div_s{i}`, `mlp_ratio_s{i}`, `kernel_size_s{i}` per stage; a tied knob drops
the suffix (`n_div`); `embed_dim`, `act`, `feature_dim`, `patch_size`, `merge_size`. Knobs with
a single choice are not suggested at all.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from .arch import ArchConfig, ArchError
from .flops import count_params
from .knobs import Knob

__all__ = ["SearchSpace", "ConstraintInfeasible", "DEFAULT_SPACE_PATH"]

DEFAULT_SPACE_PATH = Path(__file__).with_name("default.yaml")

_CONSTRAINTS = ("max_params_m", "min_params_m")
_MAX_TRIES = 1000  # rejection-sampling bound before "constraint infeasible"


class ConstraintInfeasible(ValueError):
    """Sampling found no architecture that meets the space's constraints."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Choices per stage for each knob; build with `from_file`, `from_dict` or `default()`.

    Args:
        stage_choices: per-stage field -> one tuple of choices per stage.
        global_choices: act / feature_dim / patch_size / merge_size -> choices.
        width_scale: when set, widths are tied as `embed_dim * width_scale[i]` and
            `stage_choices['widths'][0]` lists the embed_dim choices.
        tie: per-stage fields sampled once and shared by every stage.
        max_params_m, min_params_m: parameter-count bounds (millions, 1000 classes).

    The knobs are those of `arch_class` (`ArchConfig`: `search_space.knobs.KNOBS`); a space
    file names them by field (`n_divs`) and may leave out any knob with a default.
    """

    arch_class: ClassVar[type[ArchConfig]] = ArchConfig

    stage_choices: Mapping[str, tuple[tuple[Any, ...], ...]]
    global_choices: Mapping[str, tuple[Any, ...]]
    width_scale: tuple[float, ...] | None = None
    tie: frozenset[str] = frozenset()
    max_params_m: float | None = None
    min_params_m: float | None = None
    source: str = "search space"

    # ------------------------------------------------------------------ loading
    @classmethod
    def default(cls) -> SearchSpace:
        """The shipped space (`search_space/default.yaml`)."""
        return cls.from_file(DEFAULT_SPACE_PATH)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ArchError(f"{path}: cannot read search space ({e.strerror})") from None
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ArchError(f"{path}: malformed YAML ({first})") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "search space") -> SearchSpace:
        if not isinstance(data, Mapping):
            raise ArchError(f"{source}: expected a mapping of knobs, got {type(data).__name__}")
        stage_knobs, global_knobs = _split(cls.arch_class.KNOBS)
        top_keys = ("stages", *(k.field for k in stage_knobs + global_knobs), "tie", "constraints")
        for key in data:
            if key not in top_keys:
                raise ArchError(f"{source}: unknown key {key!r}; known keys: {', '.join(top_keys)}")
        n = data.get("stages", 4)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArchError(f"{source}: stages must be a positive integer, got {n!r}")
        for knob in stage_knobs + global_knobs:
            if knob.required and knob.field not in data:
                raise ArchError(f"{source}: missing key {knob.field!r}")
        width_scale = None
        widths = data["widths"]
        if isinstance(widths, Mapping):
            if set(widths) != {"embed_dim", "scale"}:
                raise ArchError(f"{source}: widths as a mapping needs exactly the keys "
                                f"'embed_dim' and 'scale', got {sorted(widths)}")
            width_scale = tuple(_choices(source, "widths.scale", widths["scale"]))
            if len(width_scale) != n:
                raise ArchError(f"{source}: widths.scale has {len(width_scale)} values "
                                f"for {n} stages")
            widths = [widths["embed_dim"]]
        stage_choices = {}
        for knob in stage_knobs:
            key = knob.field
            raw = widths if key == "widths" else data.get(key, [knob.default])
            stage_choices[key] = _per_stage(source, key, raw, 1 if width_scale and
                                            key == "widths" else n)
        global_choices = {k.field: _choices(source, k.field, data.get(k.field, [k.default]))
                          for k in global_knobs}
        tie = data.get("tie") or []
        if isinstance(tie, str) or not isinstance(tie, Sequence):
            raise ArchError(f"{source}: tie must be a list of knob names, got {tie!r}")
        for key in tie:
            if key not in stage_choices:
                raise ArchError(f"{source}: tie: unknown knob {key!r}; choose from "
                                f"{', '.join(stage_choices)}")
            if key == "widths" and width_scale:
                continue  # already tied through embed_dim
            if len(set(stage_choices[key])) != 1:
                raise ArchError(f"{source}: tie: {key} has different choices per stage; a tied "
                                "knob needs one list of choices for all stages")
        constraints = data.get("constraints") or {}
        if not isinstance(constraints, Mapping):
            raise ArchError(f"{source}: constraints must be a mapping, got {constraints!r}")
        for key, value in constraints.items():
            if key not in _CONSTRAINTS:
                raise ArchError(f"{source}: unknown constraint {key!r}; known: "
                                f"{', '.join(_CONSTRAINTS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ArchError(f"{source}: constraint {key} must be a positive number, "
                                f"got {value!r}")
        space = cls(stage_choices=stage_choices, global_choices=global_choices,
                    width_scale=width_scale, tie=frozenset(tie),
                    max_params_m=constraints.get("max_params_m"),
                    min_params_m=constraints.get("min_params_m"), source=source)
        space._check_buildable()
        return space

    def _check_buildable(self) -> None:
        """Every combination of one stage's choices must be a legal stage (a few thousand
        cheap ArchConfig checks); every global choice must be legal."""
        first = {key: choices[0] for key, choices in self.global_choices.items()}
        fields = list(self.stage_choices)
        for i in range(self.num_stages):
            per_stage = [self._stage_widths(i) if f == "widths" else self.stage_choices[f][i]
                         for f in fields]
            for combo in itertools.product(*per_stage):
                try:
                    self.arch_class(**{f: (v,) for f, v in zip(fields, combo)}, **first)
                except ArchError as e:
                    raise ArchError(f"{self.source}: stage {i} choices can build an invalid "
                                    f"network: {e}") from None
        one_stage = {f: (self.stage_choices[f][0][0],) for f in fields}
        one_stage["widths"] = (self._stage_widths(0)[-1],)
        one_stage["n_divs"] = (1,)
        for key, choices in self.global_choices.items():
            for value in choices:
                try:
                    self.arch_class(**one_stage, **{**first, key: value})
                except ArchError as e:
                    raise ArchError(f"{self.source}: choice {key}={value!r} is invalid "
                                    f"({e})") from None

    def _stage_widths(self, i: int) -> tuple[Any, ...]:
        if self.width_scale:
            return tuple(_scaled(e, self.width_scale[i]) for e in self.stage_choices["widths"][0])
        return self.stage_choices["widths"][i]

    # ------------------------------------------------------------------ structure
    @property
    def num_stages(self) -> int:
        return len(self.width_scale) if self.width_scale else len(self.stage_choices["widths"])

    def _knobs(self) -> list[tuple[str, tuple[Any, ...], str, int]]:
        """(parameter name, choices, ArchConfig field, stage holding its value; -1 for a
        global field) for every knob, in suggestion order."""
        stage_knobs, global_knobs = _split(self.arch_class.KNOBS)
        out = []
        for knob in stage_knobs:
            field, stem = knob.field, knob.param
            per_stage = self.stage_choices[field]
            if field == "widths" and self.width_scale:
                out.append(("embed_dim", per_stage[0], field, 0))
            elif field in self.tie:
                out.append((stem, per_stage[0], field, 0))
            else:
                out += [(f"{stem}_s{i}", choices, field, i) for i, choices in enumerate(per_stage)]
        out += [(k.param, self.global_choices[k.field], k.field, -1) for k in global_knobs]
        return out

    def params(self) -> dict[str, tuple[Any, ...]]:
        """Optuna parameter name -> choices, in suggestion order (single choices left out)."""
        return {name: choices for name, choices, _, _ in self._knobs() if len(choices) > 1}

    def size(self) -> int:
        """Number of architectures in the grid (constraints not applied)."""
        return math.prod(len(c) for c in self.params().values())

    def to_arch(self, values: Mapping[str, Any]) -> ArchConfig:
        """The architecture for a full assignment of `params()` names (constraints unchecked)."""
        n = self.num_stages
        stage_knobs, global_knobs = _split(self.arch_class.KNOBS)
        kwargs: dict[str, Any] = {}
        for knob in stage_knobs:
            field, stem = knob.field, knob.param
            per_stage = self.stage_choices[field]
            if field == "widths" and self.width_scale:
                e = values.get("embed_dim", per_stage[0][0])
                kwargs[field] = tuple(_scaled(e, s) for s in self.width_scale)
            elif field in self.tie:
                kwargs[field] = (values.get(stem, per_stage[0][0]),) * n
            else:
                kwargs[field] = tuple(values.get(f"{stem}_s{i}", per_stage[i][0])
                                      for i in range(n))
        for knob in global_knobs:
            kwargs[knob.field] = values.get(knob.param, self.global_choices[knob.field][0])
        return self.arch_class(**kwargs)

    def violation(self, arch: ArchConfig) -> str | None:
        """Why `arch` breaks a constraint, or None."""
        if self.max_params_m is None and self.min_params_m is None:
            return None
        params = count_params(arch) / 1e6
        if self.max_params_m is not None and params > self.max_params_m:
            return f"{params:.2f}M params > max_params_m={self.max_params_m}"
        if self.min_params_m is not None and params < self.min_params_m:
            return f"{params:.2f}M params < min_params_m={self.min_params_m}"
        return None

    # ------------------------------------------------------------------ sampling
    def suggest(self, trial: Any) -> ArchConfig:
        """Sample through an Optuna trial. Raises ConstraintInfeasible on a constraint
        violation (Optuna fixes a trial's parameters, so it cannot be resampled)."""
        values = {name: trial.suggest_categorical(name, list(choices))
                  for name, choices in self.params().items()}
        arch = self.to_arch(values)
        why = self.violation(arch)
        if why:
            raise ConstraintInfeasible(f"{self.source}: constraint violated: {why}")
        return arch

    def sample(self, rng: np.random.Generator, max_tries: int = _MAX_TRIES) -> ArchConfig:
        """Uniform sample meeting the constraints; bounded rejection sampling."""
        params = self.params()
        last = ""
        for _ in range(max_tries):
            values = {name: choices[int(rng.integers(len(choices)))]
                      for name, choices in params.items()}
            arch = self.to_arch(values)
            last = self.violation(arch) or ""
            if not last:
                return arch
        raise ConstraintInfeasible(f"{self.source}: constraint infeasible: no architecture in "
                                   f"{max_tries} samples met the constraints (last: {last})")

    def values(self, arch: ArchConfig) -> dict[str, Any] | None:
        """The assignment of `params()` names that gives `arch` (what `suggest` would have
        drawn), or None if `arch` is not one of this space's architectures (constraints
        included)."""
        if arch.num_stages != self.num_stages:
            return None
        values: dict[str, Any] = {}
        for name, choices, field, stage in self._knobs():
            if len(choices) < 2:
                continue  # not a parameter; to_arch fills it in and the comparison checks it
            value = getattr(arch, field) if stage < 0 else getattr(arch, field)[stage]
            if name == "embed_dim":
                value = value / self.width_scale[0]
            if value not in choices:
                return None
            values[name] = choices[list(choices).index(value)]  # the choice itself (48, not 48.0)
        try:
            rebuilt = self.to_arch(values)
        except ArchError:
            return None
        return values if rebuilt == arch and self.violation(arch) is None else None

    def contains(self, arch: ArchConfig) -> bool:
        """Whether `arch` is one of this space's architectures (constraints included)."""
        return self.values(arch) is not None

    def __str__(self) -> str:
        return f"SearchSpace({self.source}: {len(self.params())} knobs, {self.size():.3g} architectures)"


def _split(knobs: tuple[Knob, ...]) -> tuple[list[Knob], list[Knob]]:
    """(per-stage knobs, global knobs), each in declaration order."""
    return [k for k in knobs if k.per_stage], [k for k in knobs if not k.per_stage]


def _scaled(embed_dim: Any, scale: float) -> Any:
    """embed_dim * scale, as an int when whole (ArchConfig rejects fractional widths)."""
    w = embed_dim * scale
    return int(w) if float(w).is_integer() else w


def _choices(source: str, key: str, raw: Any) -> tuple[Any, ...]:
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise ArchError(f"{source}: {key} must be a non-empty list of choices, got {raw!r}")
    for value in raw:
        if isinstance(value, (list, tuple, Mapping)) or isinstance(value, bool):
            raise ArchError(f"{source}: {key}: choice {value!r} is not a scalar")
    if len(set(raw)) != len(raw):
        raise ArchError(f"{source}: {key} lists a choice twice: {list(raw)!r}")
    return tuple(raw)


def _per_stage(source: str, key: str, raw: Any, n: int) -> tuple[tuple[Any, ...], ...]:
    """One flat list (same choices per stage) or a list of n lists."""
    if isinstance(raw, Sequence) and not isinstance(raw, str) and raw and all(
            isinstance(r, (list, tuple)) for r in raw):
        if len(raw) != n:
            raise ArchError(f"{source}: {key} gives choices for {len(raw)} stages, expected {n}")
        return tuple(_choices(source, f"{key}[{i}]", r) for i, r in enumerate(raw))
    return (_choices(source, key, raw),) * n
