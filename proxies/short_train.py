"""Short-training accuracy proxy: a fixed, seeded recipe run for a fidelity budget.

Recipe (timm factories): AdamW (`timm.optim.create_optimizer_v2`, no weight decay on
norms and biases), linear warm-up then cosine decay to zero, stepped per update
(`timm.scheduler.CosineLRScheduler`), label-smoothing cross-entropy
(`timm.loss.LabelSmoothingCrossEntropy`). No augmentation: a short run does not overfit.

Returns validation accuracy and the sum of the training losses, TSE (Ru et al.,
"Speedy Performance Estimation for Neural Architecture Search", NeurIPS 2021), which
ranks architectures well early in training; EcoNAS (Zhou et al., CVPR 2020) motivates the
reduced-resolution, reduced-data, few-step fidelity.

Deterministic on CPU for a given seed: the seed fixes the weight initialization, the
training subset and the batch order; the run uses one thread and
`torch.use_deterministic_algorithms` (both restored afterwards).

Speed choices (measured by `benchmarks/proxy_speed.py`): images are held in memory as
uint8 tensors and batches are sliced from them (no DataLoader, no workers); the input
is 32x32 at the `quick` budget; the model runs channels_last; one intra-op thread,
because on a shared 2-core machine two OpenMP threads contending with other processes
were 2-5x slower per step than one (253 ms vs 1376 ms for a T0 step at batch 128).
`torch.compile` is not used: its compile time (tens of seconds per architecture) exceeds
the whole `quick` budget.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from search_space import ArchConfig, build_model

from .base import Budget, Callback, ProxyResult, StopTrial
from .data import Dataset, load_dataset
from .device import (
    determinism,
    device_name,
    precision_name,
    resolve_device,
    resolve_precision,
    torch_settings,
)

__all__ = ["ShortTrain", "torch_settings", "crop_flip"]


def _resolve(dataset: Dataset | str) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else load_dataset(dataset)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding (an eighth of the side: 3 px at 28, 4 at 32) and random
    horizontal flip of a uint8 batch (N x C x H x W), on the batch's device. The random
    numbers come from the CPU `generator`, so a seed gives the same images on any device."""
    n, _, h, w = x.shape
    pad = max(1, w // 8)
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = shift[0, :, None] + torch.arange(h, device=x.device)
    cols = shift[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dimensions first: N x H x W x C.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ShortTrain:
    """Accuracy after a short, seeded training run: ``ShortTrain(...)(arch) -> ProxyResult``.

    Args:
        dataset: a `Dataset` or a name for `load_dataset` (loaded now, so a bad name fails
            at construction).
        budget: a `Budget`, a level name (``smoke``, ``quick``, ``full``) or ``key=value``
            string (see `Budget.parse`).
        seed: fixes initialization, training subset and batch order.
        threads: intra-op CPU threads during the run (1: see the module docstring); a CPU
            setting only.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a device
            this machine lacks raises `DeviceError` here. The dataset is moved there once.
        deterministic: deterministic algorithms (exact on the CPU, best-effort on CUDA;
            the result's ``determinism`` says which, see `proxies.device`).
        score: ``accuracy`` (the default) or ``tse``; the latter scores a run by minus its
            sum of training losses (name ``tse``), accuracy still measured.

    ``score`` is the validation accuracy (fraction) by default. With a ``callback``, the accuracy is
    also measured at ``budget.checkpoints`` evenly spaced steps and passed to
    ``callback(step, accuracy)``; returning True or raising `StopTrial` ends the run
    (``stopped_early=True``, accuracy so far). Any other exception from the callback
    (e.g. ``optuna.TrialPruned``) propagates unchanged.
    """

    name = "short_train"

    def __init__(self, *, dataset: Dataset | str = "fashion-mnist",
                 budget: Budget | str = "quick", seed: int = 0, threads: int = 1,
                 device: str | torch.device = "auto", deterministic: bool = True,
                 score: str = "accuracy") -> None:
        if score not in ("accuracy", "tse"):
            raise ValueError(f"score: {score!r} must be 'accuracy' or 'tse'")
        self.score = score
        self.name = "short_train" if score == "accuracy" else "tse"
        self.budget = Budget.parse(budget)
        self.device = resolve_device(device)
        self.dtype = resolve_precision(self.budget.precision, self.device)
        self.deterministic = bool(deterministic)
        self.dataset = _resolve(dataset).to(self.device)
        self.seed = int(seed)
        self.threads = int(threads)

    def __repr__(self) -> str:
        return (f"ShortTrain(dataset={self.dataset.name!r}, budget={self.budget}, "
                f"seed={self.seed}, device={str(self.device)!r})")

    def __call__(self, arch: ArchConfig, *, callback: Callback | None = None) -> ProxyResult:
        start = time.perf_counter()
        run = _Run(self, arch)
        try:
            return self._train(run, start, callback)
        finally:
            run.release()

    def _train(self, run: _Run, start: float, callback: Callback | None) -> ProxyResult:
        with torch_settings(self.threads, self.deterministic, self.device):
            try:
                run.setup()
            except torch.OutOfMemoryError:
                return run.result(start, failed=f"out of memory building the network on "
                                                f"{self.device}")
            except (RuntimeError, ValueError) as e:
                return run.result(start, failed=f"cannot build or run the network: {_first(e)}")
            marks = _checkpoint_steps(self.budget) if callback is not None else ()
            for step in range(self.budget.steps):
                try:
                    run.train_step(step)
                except torch.OutOfMemoryError:
                    return run.result(start, failed=f"out of memory at batch {step + 1} on "
                                                    f"{self.device}")
                except (RuntimeError, ValueError) as e:
                    return run.result(start, failed=f"step {step + 1}: {_first(e)}")
                if run.failed:
                    return run.result(start, failed=run.failed)
                if step + 1 in marks and step + 1 < self.budget.steps:
                    acc = run.evaluate()
                    if run.failed:
                        return run.result(start)
                    try:
                        stop = bool(callback(step + 1, acc))  # type: ignore[misc]
                    except StopTrial:
                        stop = True
                    if stop:
                        return run.result(start, stopped=True)
            run.evaluate()
            if run.failed:
                return run.result(start)
            if callback is not None:
                try:
                    callback(self.budget.steps, run.accuracy)
                except StopTrial:
                    pass  # training is over anyway
            return run.result(start)


def _checkpoint_steps(budget: Budget) -> frozenset[int]:
    n = min(budget.checkpoints, budget.steps)
    return frozenset(round(budget.steps * k / n) for k in range(1, n + 1))


def _first(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class _Run:
    """State of one training run (model, optimizer, data order, running sums)."""

    def __init__(self, proxy: ShortTrain, arch: ArchConfig) -> None:
        self.proxy, self.arch, self.budget = proxy, arch, proxy.budget
        self.data = proxy.dataset
        self.tse = 0.0
        self.steps = 0
        self.accuracy: float | None = None
        self.val_loss: float | None = None
        self.checkpoints: list[tuple[int, float]] = []
        self.train_losses: list[tuple[int, float]] = []
        self._loss_mark = (0, 0.0)  # (steps, tse) at the previous checkpoint
        self.failed = ""
        self.device = proxy.device
        self.model: torch.nn.Module | None = None

    def setup(self) -> None:
        b, data = self.budget, self.data
        rng = np.random.default_rng(self.proxy.seed)
        n_train = len(data.train_y)
        subset = rng.permutation(n_train)[: min(b.subset, n_train)]
        # Batch order: successive shuffles of the subset, enough for every step.
        epochs = math.ceil(b.steps * b.batch_size / len(subset))
        self.order = np.concatenate([rng.permutation(subset) for _ in range(epochs)])
        # Validation images: a fixed permutation (seed-independent), so every seed and
        # architecture is measured on the same images.
        val = np.random.default_rng(0).permutation(len(data.val_y))[: b.val_size]
        self.val_idx = torch.from_numpy(np.sort(val))
        # Augmentation draws from its own CPU generator: the same images on every device.
        self.augment = torch.Generator().manual_seed(self.proxy.seed) if b.augment else None
        torch.manual_seed(self.proxy.seed)
        self.model = build_model(self.arch, num_classes=data.num_classes, in_chans=data.in_chans)
        self.model = self.model.to(self.device, memory_format=torch.channels_last).train()
        dtype = self.proxy.dtype
        self.autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32
                         else contextlib.nullcontext())
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=b.lr,
                                             weight_decay=b.weight_decay)
        warmup = round(b.warmup * b.steps)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=b.steps - warmup,
                                           warmup_t=warmup, warmup_lr_init=b.lr * 0.01,
                                           warmup_prefix=True, t_in_epochs=True)
        self.loss_fn = (LabelSmoothingCrossEntropy(b.label_smoothing) if b.label_smoothing > 0
                        else torch.nn.CrossEntropyLoss())

    def train_step(self, step: int) -> None:
        b = self.budget
        idx = torch.from_numpy(self.order[step * b.batch_size: (step + 1) * b.batch_size])
        images = self.data.train_x[idx.to(self.data.train_x.device)]
        if self.augment is not None:
            images = crop_flip(images, self.augment)
        x = self.data.batch(images, b.resolution)
        y = self.data.train_y[idx.to(self.data.train_y.device)]
        self.scheduler.step(step)
        with self.autocast:
            loss = self.loss_fn(self.model(x), y)
        value = float(loss.detach())  # one host sync per step: the NaN check needs it
        if not math.isfinite(value):
            self.failed = f"training loss became {value} at step {step + 1}"
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.tse += value
        self.steps = step + 1

    @torch.no_grad()
    def evaluate(self) -> float:
        b, data = self.budget, self.data
        self.model.eval()
        correct, loss = 0, 0.0
        chunk = 250 if self.device.type == "cpu" else 2000  # bounded memory at any resolution
        val_idx = self.val_idx.to(data.val_x.device)
        for i in range(0, len(val_idx), chunk):
            idx = val_idx[i: i + chunk]
            with self.autocast:
                logits = self.model(data.batch(data.val_x[idx], b.resolution)).float()
            if not torch.isfinite(logits).all():
                self.failed = f"non-finite outputs on validation at step {self.steps}"
                break
            labels = data.val_y[idx]
            correct += int((logits.argmax(1) == labels).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        self.model.train()
        self.accuracy = correct / len(self.val_idx) if not self.failed else None
        self.val_loss = loss / len(self.val_idx) if not self.failed else None
        if self.accuracy is not None:
            self.checkpoints.append((self.steps, self.accuracy))
            steps, tse = self._loss_mark
            if self.steps > steps:
                self.train_losses.append((self.steps, (self.tse - tse) / (self.steps - steps)))
            self._loss_mark = (self.steps, self.tse)
        return self.accuracy if self.accuracy is not None else float("nan")

    def result(self, start: float, failed: str = "", stopped: bool = False) -> ProxyResult:
        failed = failed or self.failed
        acc = None if failed else self.accuracy
        score = float("-inf") if failed or acc is None else (
            acc if self.proxy.score == "accuracy" else -self.tse)
        val_loss = None if failed else self.val_loss
        return ProxyResult(
            proxy=self.proxy.name, arch_id=self.arch.arch_id, score=score, accuracy=acc,
            tse=self.tse if not failed else None, val_loss=val_loss,
            seconds=time.perf_counter() - start,
            failed=bool(failed), reason=failed, steps=self.steps,
            checkpoints=tuple(self.checkpoints), stopped_early=stopped,
            budget=self.budget, seed=self.proxy.seed, train_losses=tuple(self.train_losses),
            device=device_name(self.device),
            determinism=determinism(self.device, self.proxy.deterministic),
            precision=precision_name(self.proxy.dtype))

    def release(self) -> None:
        """Free the model and optimizer now (after an out-of-memory error, the next
        candidate must find the GPU memory free)."""
        self.model = self.optimizer = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
