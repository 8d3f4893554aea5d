"""Training one architecture to completion: ``train(arch, TrainConfig(...)) -> TrainResult``.

timm's components throughout: the network from `timm.create_model("pconv_fasternet", ...)`,
`timm.optim.create_optimizer_v2` (AdamW by default, no weight decay on norms and biases),
`timm.scheduler.create_scheduler_v2` stepped once per update (linear warm-up from lr/100,
then cosine to zero), `timm.data.Mixup` for Mixup/CutMix, `timm.utils.ModelEmaV3` for an EMA
of the weights, timm's label-smoothing and soft-target losses. bf16 autocast on CUDA (fp16
with a gradient scaler where bf16 is missing; `proxies.device`), channels_last everywhere.

The recipe and data path are the reference protocol's (`proxies.reference`), the same
`ShortTrain` runs for the ground truth: images held in memory as uint8 tensors
(`proxies.data`), the training order a stream of seeded shuffles cut into batches of
``batch_size`` (an epoch is ``n // batch_size`` of them), random crop after padding and
flip (`proxies.short_train.crop_flip`), accuracy on the whole held-out (test) split after
every epoch. Under the same seed and settings a CPU run is bit-exact with `ShortTrain` under
`Protocol.budget` (tests/test_train.py checks it) and with itself after `resume`.

Several processes (``torchrun --nproc_per_node N``; ``WORLD_SIZE`` in the environment):
DistributedDataParallel, NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on the CPU.
Every process draws the same global batch of ``N x batch_size`` images and trains on its
share; the held-out images are split between them and the counts summed. Only rank 0
writes files and shows progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as torch_dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

import search_space  # noqa: F401  (registers pconv_fasternet with timm)
from proxies.data import Dataset, DatasetError, load_dataset
from proxies.device import (
    DeviceError,
    determinism,
    device_name,
    precision_name,
    resolve_device,
    resolve_precision,
    torch_settings,
)
from proxies.short_train import crop_flip
from search_space import ArchConfig

from . import _checkpoint as ckpt
from .config import TrainConfig, TrainError

__all__ = ["train", "TrainResult", "EpochRecord", "TrainingDiverged"]

Log = Callable[[str], None]


class TrainingDiverged(RuntimeError):
    """The loss or the outputs became NaN or infinite (the run, not the input, failed)."""


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: mean training loss, held-out accuracy (fractions), the learning
    rate of its last update, and its wall time in seconds (training and evaluation)."""

    epoch: int
    train_loss: float
    test_acc: float
    lr: float
    seconds: float
    test_acc_ema: float | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A finished run: the last epoch's held-out accuracy (fraction) and where it came from."""

    arch: ArchConfig
    accuracy: float
    accuracy_ema: float | None
    history: tuple[EpochRecord, ...]
    seconds: float
    """Wall time of this call (a resumed run: since the resume)."""
    device: str
    precision: str
    determinism: str
    heldout: str
    n_train: int
    n_heldout: int
    num_classes: int
    in_chans: int
    world_size: int
    out: Path | None


@dataclasses.dataclass(frozen=True)
class _Ranks:
    """This process's place among `torchrun`'s (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> _Ranks:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


def train(arch: ArchConfig, config: TrainConfig, *, dataset: Dataset | None = None,
          progress: bool = False, log: Log | None = None, threads: int | None = None,
          deterministic: bool = True) -> TrainResult:
    """Train `arch` under `config`; files go to ``config.out`` (none when it is None).

    Args:
        dataset: the images, if already loaded (``load_dataset(name, heldout="test")``);
            default: `config.dataset`, loaded here.
        progress: a tqdm bar with the ETA on stderr (rank 0).
        log: receives one line per finished epoch (rank 0).
        threads: intra-op CPU threads during the run (default: torch's current setting).
        deterministic: deterministic algorithms (exact on the CPU, best-effort on CUDA).

    Bad input (a device this machine lacks, a dataset that cannot be found, a resume that
    does not match its checkpoint, an --out that holds another run) raises `TrainError`
    before anything is written. A loss that becomes NaN raises `TrainingDiverged`.
    """
    ranks = _Ranks.from_env()
    try:
        device = resolve_device(config.device)
    except DeviceError as e:
        raise TrainError(f"--device: {e}") from None
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device("cuda", ranks.local)
    try:
        data = dataset if dataset is not None else load_dataset(config.dataset, heldout="test")
    except DatasetError as e:
        raise TrainError(f"--dataset: {e}") from None
    out = Path(config.out) if config.out else None
    state = _check_out(out, arch, config)
    started = ranks.world > 1 and not torch_dist.is_initialized()
    if started:
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with torch_settings(threads or torch.get_num_threads(), deterministic, device):
            run = _Run(arch, config, data.to(device), device, ranks)
            if state is not None:
                run.restore(state)
            elif out is not None and ranks.main:
                out.mkdir(parents=True, exist_ok=True)
                arch.save(out / ckpt.ARCH_FILE)
            result = run.fit(out, progress, log, deterministic)
    finally:
        if started:
            torch_dist.destroy_process_group()
    return result


def _check_out(out: Path | None, arch: ArchConfig, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: a fresh run), after the checks on `out`."""
    if out is None:
        if config.resume:
            raise TrainError("--resume needs --out (the folder of the run to continue)")
        return None
    if config.resume:
        return ckpt.load_for_resume(out, arch, config)
    if (out / ckpt.CHECKPOINT).exists():
        raise TrainError(f"{out} already holds a training run ({ckpt.CHECKPOINT}); add --resume "
                         "to continue it or choose another --out")
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: not a folder")
    return None


class _Run:
    """The state of one run: network, optimizer, scheduler, EMA, data order, history."""

    def __init__(self, arch: ArchConfig, config: TrainConfig, data: Dataset,
                 device: torch.device, ranks: _Ranks) -> None:
        c = self.config = config
        self.arch, self.data, self.device, self.ranks = arch, data, device, ranks
        n_all = len(data.train_y)
        self.global_batch = c.batch_size * ranks.world
        rng = np.random.default_rng(c.seed)
        perm = rng.permutation(n_all)
        # The first N images (--limit-train), in the seeded order ShortTrain's subset takes.
        subset = perm if c.limit_train is None else perm[perm < c.limit_train]
        self.n_train = len(subset)
        self.steps_per_epoch = self.n_train // self.global_batch
        if self.steps_per_epoch < 1:
            raise TrainError(f"--batch-size {c.batch_size}: a step takes {self.global_batch} "
                             f"images, the training split has {self.n_train}")
        self.total = c.epochs * self.steps_per_epoch
        shuffles = math.ceil(self.total * self.global_batch / self.n_train)
        self.order = np.concatenate([rng.permutation(subset) for _ in range(shuffles)])
        # Augmentation draws from its own CPU generator: the same images on every device.
        self.augment = torch.Generator().manual_seed(c.seed) if c.augment else None
        torch.manual_seed(c.seed)
        model = timm.create_model(ckpt.MODEL_NAME, arch=arch, num_classes=data.num_classes,
                                  in_chans=data.in_chans, drop_path_rate=c.drop_path)
        self.model = model.to(device, memory_format=torch.channels_last).train()
        self.dtype = resolve_precision("auto", device)
        self.autocast = (torch.autocast(device.type, dtype=self.dtype)
                         if self.dtype != torch.float32 else contextlib.nullcontext())
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.optimizer = create_optimizer_v2(self.model, opt=c.opt, lr=c.lr,
                                             weight_decay=c.weight_decay)
        # One scheduler unit = one update (step_on_epochs with updates as "epochs"), so the
        # warm-up is a whole number of updates, as in ShortTrain.
        warmup = round(c.warmup * self.total)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=c.sched, num_epochs=self.total - warmup, warmup_epochs=warmup,
            warmup_lr=c.lr * 0.01, warmup_prefix=True, min_lr=0.0, step_on_epochs=True)
        self.ema = (ModelEmaV3(self.model, decay=c.model_ema_decay, use_warmup=True)
                    if c.model_ema else None)
        mixing = c.mixup > 0 or c.cutmix > 0
        self.mixup = Mixup(mixup_alpha=c.mixup, cutmix_alpha=c.cutmix,
                           label_smoothing=c.label_smoothing,
                           num_classes=data.num_classes) if mixing else None
        self.loss_fn = (SoftTargetCrossEntropy() if mixing else
                        LabelSmoothingCrossEntropy(c.label_smoothing) if c.label_smoothing > 0
                        else torch.nn.CrossEntropyLoss())
        self.net = self.model
        if ranks.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.updates, self.tse, self.history = 0, 0.0, []

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["state_dict_ema"])
        if "amp_scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["amp_scaler"])
        if self.augment is not None:
            self.augment.set_state(state["augment_rng"])
        self.updates, self.tse = int(state["updates"]), float(state["tse"])
        self.history = [EpochRecord(**row) for row in state["history"]]

    # ------------------------------------------------------------------ training
    def fit(self, out: Path | None, progress: bool, log: Log | None,
            deterministic: bool) -> TrainResult:
        start = time.perf_counter()
        main = self.ranks.main
        bar = tqdm(total=self.total, initial=self.updates, unit="step", dynamic_ncols=True,
                   desc=self.arch.arch_id, disable=not (progress and main))
        try:
            for epoch in range(len(self.history), self.config.epochs):
                self._epoch(epoch, bar)
                if out is not None and main:
                    ckpt.save_checkpoint(out, self._state())
                    ckpt.write_csv(out, [dataclasses.asdict(r) for r in self.history])
                if log is not None and main:
                    with tqdm.external_write_mode():
                        log(_epoch_line(self.history[-1], self.config.epochs))
        finally:
            bar.close()
        last = self.history[-1]
        result = TrainResult(
            arch=self.arch, accuracy=last.test_acc, accuracy_ema=last.test_acc_ema,
            history=tuple(self.history), seconds=time.perf_counter() - start,
            device=device_name(self.device), precision=precision_name(self.dtype),
            determinism=determinism(self.device, deterministic), heldout=self.data.heldout,
            n_train=self.n_train, n_heldout=len(self.data.val_y),
            num_classes=self.data.num_classes, in_chans=self.data.in_chans,
            world_size=self.ranks.world,
            out=out)
        if out is not None and main:
            ckpt.write_json(out, _record(result, self.config))
        return result

    def _epoch(self, epoch: int, bar: tqdm) -> None:
        t0 = time.perf_counter()
        if self.mixup is not None:
            # timm's Mixup draws from NumPy's global generator: seeded per epoch and rank, so
            # a resumed run repeats the uninterrupted one.
            np.random.seed([self.config.seed, self.ranks.rank, epoch])
        tse_before = self.tse
        for _ in range(self.steps_per_epoch):
            self._step()
            bar.update()
        steps = self.steps_per_epoch
        loss = (self.tse - tse_before) / steps
        if self.ranks.world > 1:
            loss = _mean_over_ranks(loss, self.device)
        acc = self._evaluate(self._recalibrate(self.model))
        acc_ema = (self._evaluate(self._recalibrate(self.ema.module)) if self.ema is not None
                   else None)
        record = EpochRecord(epoch=epoch + 1, train_loss=loss, test_acc=acc,
                             lr=float(self.optimizer.param_groups[0]["lr"]),
                             seconds=round(time.perf_counter() - t0, 3), test_acc_ema=acc_ema)
        self.history.append(record)
        bar.set_postfix_str(f"epoch {epoch + 1}: loss {loss:.3f}, test {100 * acc:.2f} %")

    def _step(self) -> None:
        u, b, data = self.updates, self.config.batch_size, self.data
        self.scheduler.step(u)
        idx = torch.from_numpy(self.order[u * self.global_batch: (u + 1) * self.global_batch])
        images = data.train_x[idx.to(data.train_x.device)]
        if self.augment is not None:  # the whole global batch: one generator for all ranks
            images = crop_flip(images, self.augment)
        mine = slice(self.ranks.rank * b, (self.ranks.rank + 1) * b)
        x = data.batch(images[mine], self.config.resolution)
        y = data.train_y[idx.to(data.train_y.device)][mine]
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        with self.autocast:
            loss = self.loss_fn(self.net(x), y)
        value = float(loss.detach())  # one host sync per step: the NaN check needs it
        if not math.isfinite(value):
            raise TrainingDiverged(f"training loss became {value} at update {u + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.updates = u + 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.updates)
        self.tse += value

    @torch.no_grad()
    def _recalibrate(self, model: torch.nn.Module) -> torch.nn.Module:
        """PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): BatchNorm's
        running statistics recomputed as the plain average over `bn_recalibrate` training
        images (the first of the run's order, without augmentation, in training-size
        batches; every rank the same), the rest of the network in eval mode. The training
        itself never reads these statistics."""
        b = self.config.batch_size
        n = min(self.config.bn_recalibrate, self.n_train)
        n = n if n <= b else n // b * b  # whole batches: a last batch of one image breaks BN
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if n == 0 or not norms:
            return model
        was_training = model.training
        model.eval()
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
            m.train()
        data = self.data
        idx = torch.from_numpy(self.order[:n]).to(data.train_x.device)
        for i in range(0, n, b):
            with self.autocast:
                model(data.batch(data.train_x[idx[i: i + b]], self.config.resolution))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
        return model

    @torch.no_grad()
    def _evaluate(self, model: torch.nn.Module) -> float:
        """Accuracy (fraction) on the held-out split, shared between the ranks."""
        data, was_training = self.data, model.training
        model.eval()
        idx_all = torch.arange(len(data.val_y), device=data.val_y.device)
        mine = idx_all[self.ranks.rank::self.ranks.world]
        chunk = 250 if self.device.type == "cpu" else 2000  # bounded memory at any resolution
        correct = 0
        for i in range(0, len(mine), chunk):
            idx = mine[i: i + chunk]
            with self.autocast:
                logits = model(data.batch(data.val_x[idx], self.config.resolution)).float()
            if not torch.isfinite(logits).all():
                raise TrainingDiverged(f"non-finite outputs on the held-out images after "
                                       f"{self.updates} updates")
            correct += int((logits.argmax(1) == data.val_y[idx]).sum())
        model.train(was_training)
        if self.ranks.world > 1:
            total = torch.tensor([correct], device=self.device, dtype=torch.int64)
            torch_dist.all_reduce(total)
            correct = int(total.item())
        return correct / len(data.val_y)

    def _state(self) -> dict[str, Any]:
        """The checkpoint (see `train._checkpoint` for the layout timm reads)."""
        state: dict[str, Any] = {
            "arch": ckpt.MODEL_NAME, "arch_config": self.arch.to_dict(),
            "epoch": len(self.history) - 1, "version": 2,
            "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "metric": self.history[-1].test_acc, "updates": self.updates, "tse": self.tse,
            "history": [dataclasses.asdict(r) for r in self.history],
            "config": self.config.to_dict(), "num_classes": self.data.num_classes,
            "in_chans": self.data.in_chans, "mean": list(self.data.mean),
            "std": list(self.data.std), "resolution": self.config.resolution}
        if self.ema is not None:
            state["state_dict_ema"] = self.ema.module.state_dict()
        if self.scaler.is_enabled():
            state["amp_scaler"] = self.scaler.state_dict()
        if self.augment is not None:
            state["augment_rng"] = self.augment.get_state()
        return state


def _mean_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], device=device, dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t.item()) / torch_dist.get_world_size()


def _epoch_line(r: EpochRecord, epochs: int) -> str:
    ema = f", EMA {100 * r.test_acc_ema:.2f} %" if r.test_acc_ema is not None else ""
    return (f"epoch {r.epoch}/{epochs}: train loss {r.train_loss:.4f}, test {100 * r.test_acc:.2f} %"
            f"{ema}, lr {r.lr:.2e}, {r.seconds:.1f} s")


def _record(result: TrainResult, config: TrainConfig) -> dict[str, Any]:
    """train.json: what ran, where, and what it reached (the run folder describes itself)."""
    import platform

    return {"arch_id": result.arch.arch_id, "arch": result.arch.to_dict(),
            "config": config.to_dict(), "accuracy": result.accuracy,
            "accuracy_ema": result.accuracy_ema,
            "epochs": [dataclasses.asdict(r) for r in result.history],
            "device": result.device, "precision": result.precision,
            "determinism": result.determinism, "world_size": result.world_size,
            "heldout": result.heldout, "n_train": result.n_train, "n_heldout": result.n_heldout,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "timm": timm.__version__}}
