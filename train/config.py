"""`TrainConfig`: how one network is trained, declared once.

Each field is one option of `search.py train` (declared with `optimize.config.option`, as
`SearchConfig`'s are): the parser, the one-line validation and the ``config`` record stored in
the checkpoint (which `--resume` reloads) derive from it. The recipe's defaults are the
reference protocol's (`proxies.reference.Protocol`); one evaluation setting is added,
`bn_recalibrate` (PreciseBN, on by default), which the protocol lacks: `from_protocol` turns
it off, so that a config made from a protocol trains and measures exactly as the ground truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from optimize.config import check_options, option, search_parser
from proxies.reference.protocol import Protocol

__all__ = ["TrainConfig", "TrainError", "train_parser", "RESULT_FIELDS"]

_P = Protocol()
#: The fields a resumed run must share with its checkpoint (the others say where it runs).
WHERE = ("device", "out", "resume")


class TrainError(ValueError):
    """Bad input to a training run: one line naming what is wrong and what to do."""


def _at_least(low: float):  # noqa: ANN202
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _fraction(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What a training run was asked to do (`search.py train --help`); validated on
    construction."""

    dataset: str = option("fashion-mnist", help="fashion-mnist (default), cifar10, cifar100 or "
                          "imagefolder:PATH; trains on the training split, reports the test split")
    epochs: int = option(_P.epochs, check=_at_least(1), help=f"passes over the training images "
                         f"(default {_P.epochs})")
    batch_size: int = option(_P.batch_size, check=_at_least(1), help="images per step and process "
                             f"(default {_P.batch_size}; with torchrun, per GPU)")
    lr: float = option(_P.lr, check=lambda v: None if v > 0 else "must be > 0",
                       help=f"peak learning rate (default {_P.lr:g}; not scaled with the batch)")
    opt: str = option("adamw", help="timm optimizer name (create_optimizer_v2; default adamw)")
    weight_decay: float = option(_P.weight_decay, check=_at_least(0), help="weight decay, none on "
                                 f"norms and biases (default {_P.weight_decay:g})")
    sched: str = option("cosine", choices=("cosine", "constant"), help="timm scheduler, stepped "
                        "per update (create_scheduler_v2; default cosine to zero)")
    warmup: float = option(_P.warmup, check=_fraction, help="fraction of the updates in linear "
                           f"warm-up from lr/100 (default {_P.warmup:g})")
    label_smoothing: float = option(_P.label_smoothing, check=_fraction,
                                    help=f"of the loss (default {_P.label_smoothing:g})")
    resolution: int = option(_P.resolution, check=_at_least(1), help="input side in pixels; "
                             f"images are resized on the fly (default {_P.resolution})")
    augment: bool = option(_P.augment, help="random crop after padding and horizontal flip (the "
                           "default)", negative="--no-augment", negative_help="no crop or flip")
    mixup: float = option(0.0, check=_at_least(0), help="Mixup alpha (timm.data.Mixup; default "
                          "0: off)")
    cutmix: float = option(0.0, check=_at_least(0), help="CutMix alpha (default 0: off; with "
                           "--mixup, half the batches each)")
    drop_path: float = option(0.0, check=_fraction, help="stochastic depth rate (default 0)")
    model_ema: bool = option(False, help="keep an EMA of the weights (timm ModelEmaV3, decay "
                             "warmed up); evaluated beside the model, loaded by timm by default")
    model_ema_decay: float = option(0.9998, check=_fraction, help="EMA decay (default 0.9998)")
    bn_recalibrate: int = option(2048, check=lambda v: None if v == 0 or v >= 2 else
                                 "must be 0 (off) or >= 2", metavar="N", help="before each "
                                 "evaluation, recompute the BatchNorm statistics on N training "
                                 "images (PreciseBN; default 2048, 0: off): after a few hundred "
                                 "updates the running averages still lag the weights")
    seed: int = option(0, help="fixes initialization, data order and augmentation (default 0)")
    limit_train: int | None = option(None, check=_at_least(1), help="train on the first N "
                                     "training images only (a quick look)", metavar="N")
    device: str = option("auto", help="auto (CUDA when available; default), cpu, cuda or cuda:N")
    out: str | None = option(None, help="output folder (default results/train/<arch_id>)")
    resume: bool = option(False, help="continue the run in --out from its last finished epoch "
                          "(its options as stored in the checkpoint, unless given again)")

    def __post_init__(self) -> None:
        check_options(self, TrainError)
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise TrainError(f"--batch-size {self.batch_size}: Mixup and CutMix pair the images "
                             "of a batch; give an even batch size")

    @classmethod
    def from_protocol(cls, protocol: Protocol, **changes: Any) -> TrainConfig:
        """The config that trains `protocol` (the reference recipe); `changes` set the rest."""
        fields = {f.name: getattr(protocol, f.name) for f in dataclasses.fields(Protocol)}
        return cls(**{"bn_recalibrate": 0, **fields, **changes})

    def result_fields(self) -> dict[str, Any]:
        """The fields that decide the trained weights (all but `WHERE`)."""
        return {k: v for k, v in self.to_dict().items() if k not in WHERE}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                raise TrainError(f"train config: unknown option {key!r}"
                                 + (f"; did you mean {near[0]!r}?" if near else ""))
        return cls(**data)


RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in WHERE)


def train_parser() -> argparse.ArgumentParser:
    """`search.py train`'s parser: one option per `TrainConfig` field; options not given are
    absent from the namespace (`TrainConfig` fills its defaults; `--resume` the stored ones)."""
    p = search_parser(TrainConfig, only_given=True)  # type: ignore[arg-type]
    p.prog = "search.py train"
    p.description = ("Train one architecture to completion with timm's optimizer, scheduler, "
                     "Mixup/CutMix and EMA; writes a checkpoint that timm.create_model loads. "
                     "Several GPUs: torchrun --nproc_per_node N search.py train ...")
    p.add_argument("source", help="architecture YAML/JSON, preset name (fasternet_t0) or run "
                   "folder (with --pick)")
    p.add_argument("--pick", help="front member of a run folder: knee (default) | fastest | "
                   "most-accurate | ARCH_ID, on the run's first device, as `search.py export`")
    return p
