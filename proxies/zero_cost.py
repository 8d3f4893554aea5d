"""Zero-cost proxies: a score from one batch at initialization, no training.

* ``synflow`` — Tanaka et al., "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020: with all weights replaced by their absolute
  values and an all-ones input, sum over conv/linear weights of |w * dR/dw| where R is the
  sum of the outputs. Float64, BN in eval mode (at init: identity, like the BN-free copy
  of Abdelfattah et al.). The score is ln(synflow), which orders the same way and stays
  readable.
* ``naswot`` — Mellor et al., "Neural Architecture Search without Training", ICML 2021,
  the ``jacob_cov`` form of Abdelfattah et al.: the correlation matrix of the input
  Jacobians of a batch, score ``-sum(log(v + k) + 1 / (v + k))`` over its eigenvalues v.
* ``grad_norm`` — Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021:
  sum over conv/linear layers of the L2 norm of the loss gradient.
* ``snip`` — Lee et al., "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity", ICLR 2019: sum over conv/linear weights of |w * dL/dw|.
* ``params`` / ``flops`` — baselines: parameters (millions) and fvcore multiply-adds
  (GFLOPs) at the budget's resolution; bigger is assumed better.

Every proxy uses the same protocol as `ShortTrain`: ``proxy(arch) -> ProxyResult`` with
the score in ``.score`` (higher is better), one seeded batch of ``budget.batch_size``
training images at ``budget.resolution``, one thread, deterministic, on ``device`` (fp32:
the scores are sums of tiny products that half precision would flush).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from search_space import ArchConfig, build_model, count_params, params_and_flops

from .base import Budget, Callback, ProxyResult
from .data import Dataset, load_dataset
from .device import determinism, device_name, resolve_device, torch_settings

__all__ = ["ZeroCost", "ZERO_COST_SCORES"]

_JACOB_K = 1e-5  # eigenvalue offset of Mellor et al.'s / Abdelfattah et al.'s jacob_cov


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model = model.double().eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    model(ones).sum().backward()
    total = sum(float((w.detach() * w.grad).abs().sum()) for w in _weights(model) if w.grad is not None)
    return math.log(total) if total > 0 else float("-inf")


def _naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.backward(torch.ones_like(out))
    jacob = x.grad.reshape(len(x), -1).double().cpu().numpy()
    corr = np.corrcoef(jacob)
    if not np.isfinite(corr).all():
        raise FloatingPointError("input Jacobians have zero variance (correlation undefined)")
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(np.abs(v) + _JACOB_K) + 1.0 / (np.abs(v) + _JACOB_K)))


def _loss_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()


def _grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _loss_backward(model, x, y)
    return sum(float(w.grad.norm()) for w in _weights(model) if w.grad is not None)


def _snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _loss_backward(model, x, y)
    return sum(float((w.detach() * w.grad).abs().sum()) for w in _weights(model) if w.grad is not None)


ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
#: name -> score function on (freshly initialized model in train mode, batch, labels).
ZERO_COST_SCORES: dict[str, ScoreFn] = {
    "synflow": _synflow, "naswot": _naswot, "grad_norm": _grad_norm, "snip": _snip,
}
_ANALYTIC = ("params", "flops")


class ZeroCost:
    """A zero-cost proxy by name: ``ZeroCost("snip", dataset=..., budget=..., seed=...)``.

    Names: those of `ZERO_COST_SCORES`, plus ``params`` and ``flops``. The callback of the
    common protocol is accepted and never called (there is no training to stop).
    """

    def __init__(self, name: str, *, dataset: Dataset | str = "fashion-mnist",
                 budget: Budget | str = "quick", seed: int = 0, threads: int = 1,
                 device: str | torch.device = "auto", deterministic: bool = True) -> None:
        if name not in ZERO_COST_SCORES and name not in _ANALYTIC:
            raise ValueError(f"unknown zero-cost proxy {name!r}; choose one of "
                             f"{', '.join([*ZERO_COST_SCORES, *_ANALYTIC])}")
        self.name = name
        self.device = resolve_device(device)
        self.deterministic = bool(deterministic)
        data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
        self.dataset = data.to(self.device)
        self.budget = Budget.parse(budget)
        self.seed = int(seed)
        self.threads = int(threads)

    def __repr__(self) -> str:
        return f"ZeroCost({self.name!r}, dataset={self.dataset.name!r}, seed={self.seed})"

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        data, b = self.dataset, self.budget
        rng = np.random.default_rng(self.seed)
        idx = torch.from_numpy(np.sort(rng.choice(len(data.train_y), size=min(
            b.batch_size, len(data.train_y)), replace=False))).to(self.device)
        return data.batch(data.train_x[idx], b.resolution), data.train_y[idx]

    def __call__(self, arch: ArchConfig, *, callback: Callback | None = None) -> ProxyResult:
        start = time.perf_counter()
        data, b = self.dataset, self.budget
        try:
            with torch_settings(self.threads, self.deterministic, self.device):
                if self.name == "params":
                    score = count_params(arch, num_classes=data.num_classes,
                                         in_chans=data.in_chans) / 1e6
                elif self.name == "flops":
                    score = params_and_flops(arch, resolution=b.resolution,
                                             num_classes=data.num_classes,
                                             in_chans=data.in_chans).flops_g
                else:
                    x, y = self._batch()
                    torch.manual_seed(self.seed)
                    model = build_model(arch, num_classes=data.num_classes,
                                        in_chans=data.in_chans).to(self.device).train()
                    score = ZERO_COST_SCORES[self.name](model, x, y)
            reason = "" if math.isfinite(score) else f"score is {score}"
        except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError) as e:
            text = str(e).strip().splitlines()
            score, reason = float("nan"), f"{type(e).__name__}: {text[0] if text else ''}"
        failed = bool(reason)
        return ProxyResult(proxy=self.name, arch_id=arch.arch_id,
                           score=float("-inf") if failed else float(score),
                           seconds=time.perf_counter() - start, failed=failed, reason=reason,
                           budget=b, seed=self.seed, device=device_name(self.device),
                           determinism=determinism(self.device, self.deterministic))
