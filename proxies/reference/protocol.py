"""The reference protocol: one recipe trained to completion, the ground truth's definition.

A protocol is the whole experiment a reference accuracy comes from: epochs over the full
training split, batch size, peak learning rate, input resolution, warm-up, weight decay,
label smoothing and augmentation. Batch size and learning rate belong to it, so a run on
a GPU and a run on a CPU under the same protocol are the same experiment (only the
arithmetic differs: fp32 on the CPU, bf16 autocast on CUDA, recorded per run).

The recipe is `ShortTrain`'s (AdamW, linear warm-up then cosine to zero, stepped per
update, label smoothing; timm's factories) run to completion with the usual light
augmentation (random crop after padding, horizontal flip; `proxies.short_train.crop_flip`),
accuracy measured after every epoch on a held-out split the search never reads
(`load_dataset(..., heldout="test")`). Runs train through `search.py train`'s loop
(`train.train` with `TrainConfig.from_protocol`), which is bit-exact with `ShortTrain` on the
CPU: a committed pilot row (smallest, e5-b256-lr0.0005-r32, seed 1) was reproduced exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..base import Budget

__all__ = ["Protocol"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
    """A complete training schedule (see the module docstring).

    Args:
        epochs: passes over the training split (each epoch ``n // batch_size`` steps).
        batch_size: images per step.
        lr: peak AdamW learning rate (the same for every architecture). The default 1e-3 is
            the geometric middle of the two rates the pilot measured (at 5 epochs, 5e-4 suits
            T0 and 2e-3 the smallest networks: `pilot/report.md`); the committed set trains
            both, to see whether the rate changes the ranking, before one is chosen.
        resolution: input side in pixels.
        warmup: fraction of the steps in linear warm-up (then cosine to zero).
        weight_decay: AdamW weight decay (none on norms and biases).
        label_smoothing: of the cross-entropy loss.
        augment: random crop with padding and horizontal flip.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    resolution: int = 32
    warmup: float = 0.05
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"protocol.{name}: {value!r} must be an integer >= 1")
        try:  # the remaining fields: Budget's checks, on a stand-in budget
            self.budget(60000, 10000)
        except ValueError as e:
            raise ValueError(f"protocol: {str(e).removeprefix('budget')}") from None

    @property
    def protocol_id(self) -> str:
        """Short readable id, e.g. ``e10-b256-lr0.001-r32``; non-default extras appended."""
        base = f"e{self.epochs}-b{self.batch_size}-lr{self.lr:g}-r{self.resolution}"
        extras = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if f.name not in ("epochs", "batch_size", "lr", "resolution")
                  and getattr(self, f.name) != f.default]
        return "-".join([base, *extras])

    def steps_per_epoch(self, n_train: int) -> int:
        return max(1, n_train // self.batch_size)

    def budget(self, n_train: int, n_heldout: int) -> Budget:
        """The `Budget` that runs this protocol on a split of `n_train` training images
        with every one of `n_heldout` held-out images evaluated after each epoch."""
        return Budget(steps=self.epochs * self.steps_per_epoch(n_train),
                      batch_size=self.batch_size, subset=n_train, val_size=n_heldout,
                      resolution=self.resolution, lr=self.lr, warmup=self.warmup,
                      weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                      checkpoints=self.epochs, augment=self.augment)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Protocol:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"protocol: unknown field(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def parse(cls, spec: str, base: Protocol | None = None) -> Protocol:
        """``epochs=30,lr=5e-4`` on top of `base` (default: the default protocol)."""
        base = base or cls()
        changes: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            key, sep, text = part.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ValueError(f"protocol: {part!r} is not key=value with a key of "
                                 f"{', '.join(types)}")
            changes[key] = _convert(key, types[key], text.strip())
        return base.replace(**changes)

    def cost_images(self, n_train: int) -> int:
        """Training images seen in the whole run."""
        return self.epochs * self.steps_per_epoch(n_train) * self.batch_size


def _convert(key: str, kind: str, text: str) -> Any:
    try:
        if kind == "bool":
            return {"1": True, "true": True, "0": False, "false": False}[text.lower()]
        if kind == "int":
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    except (KeyError, ValueError):
        raise ValueError(f"protocol: {key}={text!r} is not a valid {kind}") from None
