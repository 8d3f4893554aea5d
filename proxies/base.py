"""The protocol every proxy shares: a budget, a result record, an early-stop signal.

A proxy is a callable ``proxy(arch, callback=None) -> ProxyResult``, built by a factory
``factory(dataset=..., budget=..., seed=...)`` (see `proxies.PROXIES`). Higher
``ProxyResult.score`` means a better architecture for every proxy.

Budgets (fidelity) are named levels or explicit numbers. Cost is counted in training
images x pixels (steps x batch_size x resolution^2), which is what a CPU spends its time
on; `full` is 10x `quick` at the same batch and resolution and is the reference of the
validation (`python -m proxies validate`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from search_space import ArchConfig

from .device import PRECISIONS

__all__ = ["Budget", "BUDGETS", "ProxyResult", "StopTrial", "Proxy", "Callback"]


class StopTrial(Exception):  # noqa: N818  (a signal, like optuna.TrialPruned)
    """Raise from a proxy callback to stop training; the result is marked `stopped_early`."""


#: ``callback(step, accuracy_so_far)``; return True (or raise `StopTrial`) to stop.
Callback = Callable[[int, float], "bool | None"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """Fidelity of a proxy evaluation (keyword-only; see `BUDGETS` for the named levels).

    Args:
        steps: optimizer steps (short training); zero-cost proxies use one batch.
        batch_size: images per step.
        subset: training images the steps draw from (a fixed, seeded subset).
        val_size: validation images the accuracy is measured on (the first `val_size` of a
            fixed, seeded permutation of the validation split; class-balanced in expectation).
        resolution: input side in pixels (images are resized; the network is unchanged).
        lr: peak AdamW learning rate.
        warmup: fraction of the steps spent in linear warm-up.
        weight_decay: AdamW weight decay.
        label_smoothing: label smoothing of the cross-entropy loss.
        checkpoints: evaluations at evenly spaced steps when a callback is given (the last
            one is the end of training).
        augment: random crop (padding an eighth of the image side) and horizontal flip of
            every training image, drawn from the run's seed (the reference protocol's light
            augmentation; short budgets train without it).
        precision: ``auto`` (bf16 or fp16 autocast on CUDA, fp32 on the CPU), ``fp32``,
            ``bf16`` or ``fp16`` (`proxies.device.resolve_precision`).
    """

    steps: int = 64
    batch_size: int = 64
    subset: int = 8192
    val_size: int = 2000
    resolution: int = 32
    lr: float = 2e-3
    warmup: float = 0.1
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    checkpoints: int = 4
    augment: bool = False
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "subset", "val_size", "resolution", "checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"budget.{name}: {value!r} must be an integer >= 1")
        for name in ("lr", "weight_decay", "label_smoothing", "warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"budget.{name}: {value!r} must be a finite number >= 0")
        if not self.warmup < 1 or not self.label_smoothing < 1:
            raise ValueError("budget: warmup and label_smoothing must be < 1")
        if not isinstance(self.augment, bool):
            raise ValueError(f"budget.augment: {self.augment!r} must be true or false")
        if self.precision not in PRECISIONS:
            raise ValueError(f"budget.precision: {self.precision!r} must be one of "
                             f"{', '.join(PRECISIONS)}")

    def __repr__(self) -> str:
        # Fields added after the replay caches were keyed by this text (benchmarks/reports/
        # proxy_cache.json) appear only when they differ from their defaults.
        later = ("augment", "precision")
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if f.name not in later or getattr(self, f.name) != f.default]
        return f"Budget({', '.join(parts)})"

    @property
    def cost(self) -> float:
        """Training cost in mega image-pixels (steps x batch x resolution^2 / 1e6)."""
        return self.steps * self.batch_size * self.resolution**2 / 1e6

    def replace(self, **changes: Any) -> Budget:
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, spec: Budget | str | Mapping[str, Any]) -> Budget:
        """A `Budget` from itself, a level name (``quick``), a mapping, or a string such as
        ``quick,steps=40`` / ``steps=200,resolution=64`` (unnamed fields from `quick`)."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, Mapping):
            return _with(BUDGETS["quick"], dict(spec), "budget")
        if not isinstance(spec, str):
            raise ValueError(f"budget: expected a level name, a mapping or a Budget, got {spec!r}")
        base, changes = BUDGETS["quick"], {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if "=" not in part:
                if part not in BUDGETS:
                    raise ValueError(f"budget: unknown level {part!r}; choose one of "
                                     f"{', '.join(BUDGETS)} or give key=value pairs")
                base = BUDGETS[part]
                continue
            key, _, value = part.partition("=")
            changes[key.strip()] = _value(value.strip(), key.strip())
        return _with(base, changes, spec)


def _value(text: str, key: str) -> int | float | bool | str:
    """A ``key=value`` budget field: text for `precision`, a flag for `augment`, else a number."""
    if key == "precision":
        return text
    if key == "augment":
        flags = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}
        if text.lower() not in flags:
            raise ValueError(f"budget: augment={text!r} must be true or false")
        return flags[text.lower()]
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"budget: {key}={text!r} is not a number") from None


def _with(base: Budget, changes: dict[str, Any], source: str) -> Budget:
    fields = {f.name: f.type for f in dataclasses.fields(Budget)}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"budget {source!r}: unknown field {key!r}; known: {', '.join(fields)}")
        if fields[key] == "int" and isinstance(value, float) and value.is_integer():
            changes[key] = int(value)
    return base.replace(**changes)


#: Named fidelity levels. `quick` is the default proxy (~10 s for FasterNet-T0 on one
#: core); `full` is 10x its cost (same batch and resolution) and is the validation
#: reference; `smoke` is for tests. `quick` trains at lr 5e-4: at the old 2e-3 the proxy
#: ranked capacity backwards (tiny > T0 > T1 > T2), at 5e-4 it ranks tiny < T0 < T1 <= T2
#: in both seeds measured, and a default search's front rises with latency over 5x
#: (`proxies/reference/pilot/earlier_pilots.md`, sections 1 and 4); the reference set is where
#: this is to be confirmed (`proxies.reference`). `full` keeps 2e-3: the committed
#: validation rows were trained with it.
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(steps=4, batch_size=16, subset=256, val_size=128, checkpoints=2),
    "quick": Budget(lr=5e-4),
    "full": Budget(steps=640, subset=40960, val_size=5000),
}


@dataclasses.dataclass(frozen=True)
class ProxyResult:
    """What a proxy says about one architecture. Higher `score` is better for every proxy.

    `accuracy` is a fraction in [0, 1] (None for zero-cost proxies); `tse` is the sum of
    the training losses (None for zero-cost proxies); `seconds` is wall time of the call.
    A failed evaluation (non-finite loss, an error in the network) has `failed=True`, a
    `reason`, and `score=-inf`; it never raises.
    """

    proxy: str
    arch_id: str
    score: float
    accuracy: float | None = None
    tse: float | None = None
    seconds: float = 0.0
    failed: bool = False
    reason: str = ""
    steps: int = 0
    checkpoints: tuple[tuple[int, float], ...] = ()
    stopped_early: bool = False
    budget: Budget | None = None
    seed: int = 0
    train_losses: tuple[tuple[int, float], ...] = ()
    """(step, mean training loss since the previous checkpoint), at each checkpoint."""
    device: str = "cpu"
    """Where it ran (``cpu``, ``cuda:0 (NVIDIA H100 ...)``)."""
    determinism: str = "exact"
    """exact (CPU), best-effort (CUDA) or off: see `proxies.device`."""
    precision: str = "fp32"
    """The arithmetic of the training run: fp32, bf16 or fp16 autocast."""
    uncertainty: float | None = None
    """Standard error of `score` where the proxy states one (`proxies.estimate`); None:
    the caller judges it (e.g. binomial over the budget's validation images)."""
    val_loss: float | None = None
    """Mean cross-entropy (no label smoothing) on the validation images at the last
    evaluation: `accuracy`'s continuous twin (None for zero-cost proxies)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["budget"] = None if self.budget is None else dataclasses.asdict(self.budget)
        out["checkpoints"] = [list(c) for c in self.checkpoints]
        out["train_losses"] = [list(c) for c in self.train_losses]
        return out


class Proxy(Protocol):
    """One protocol for every proxy (short training and zero-cost)."""

    name: str
    budget: Budget
    seed: int

    def __call__(self, arch: ArchConfig, *, callback: Callback | None = None) -> ProxyResult:
        ...
