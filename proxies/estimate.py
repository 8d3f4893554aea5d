"""A learned accuracy estimate: cheap features of one architecture -> its trained accuracy.

Accuracy after a very short training run ranks architectures poorly and favours fast
starters, while combinations of cheap signals rank far better than any one of them (White
et al., "A Deeper Look at Zero-Cost Proxies", 2022; NAS-Bench-Suite-Zero, Krishnakumar et
al., NeurIPS 2022: predictors over all zero-cost proxies gain up to 42 %). This estimate is
the smallest such predictor that states its uncertainty:

- **Features** (`FEATURES`), all from one `quick` short-training run, two zero-cost scores
  on one batch and the closed-form size: quick accuracy, its validation cross-entropy, log
  mean training loss of the run (TSE per step, Ru et al. 2021), log params, log MFLOPs,
  NASWOT, log synflow.
- **Model**: ridge regression on standardized features, predicting the mean accuracy (%) of
  a reference set's protocol (`proxies.reference`). It is fitted on the set's *tune* half
  only (plus design-only architectures such as the pilot's, never one of the holdout half):
  the holdout half is where `python -m proxies validate --against reference` judges it.
  The feature subset and the ridge strength are chosen by leave-one-out error on the tune
  rows among the few candidates of `CANDIDATES` (a small, declared family), by the
  one-standard-error rule: the simplest candidate within one standard error of the lowest
  error, so that the choice does not follow the noise of a few rows.
- **Uncertainty**: an ensemble of `N_BOOT` ridge fits on bootstrap resamples of the tune
  rows gives the spread of the prediction; the stated standard error adds the tune rows'
  leave-one-out residual in quadrature (the error a new architecture should expect). The
  target is an architecture's mean accuracy over seeds, so the residual leaves out what the
  design rows' own seed noise contributes to it (`target_noise`^2 / seeds, averaged over the
  rows; the seed noise is the reference set's, pooled over its repeated architectures).

The fitted model is data (`estimates/<dataset>.json`: features, coefficients, the rows it
was fitted on, its leave-one-out error) and names its provenance, so every accuracy the
search prints from it says "predicted 10-epoch accuracy, fitted on N tune architectures of
the set, +-SE". It only applies to the dataset and quick budget it was fitted with: the
proxy refuses any other with one line naming the fit command.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_space import ArchConfig

from .base import Budget, Callback, ProxyResult
from .data import Dataset, load_dataset
from .device import resolve_device
from .short_train import ShortTrain
from .zero_cost import ZeroCost

__all__ = ["CANDIDATES", "FEATURES", "ESTIMATES", "Estimate", "EstimateModel", "EstimateError",
           "compatible", "features", "features_of_run", "fit", "model_path"]

#: Where fitted models live: ``ESTIMATES / <dataset slug>.json``.
ESTIMATES = Path(__file__).with_name("estimates")

#: Feature name -> one-line meaning (every feature is computed by `features`).
FEATURES: dict[str, str] = {
    "quick_acc": "accuracy (%) after the quick budget's run, on the validation split",
    "quick_loss": "log of the quick run's mean training loss (TSE / steps)",
    "quick_val_loss": "the quick run's mean cross-entropy on the validation split",
    "log_params": "log10 of the parameter count (millions)",
    "log_mflops": "log10 of the MFLOPs at the budget's resolution",
    "naswot": "NASWOT score on one batch (Mellor et al. 2021)",
    "log_synflow": "log10 of the synflow score on one batch (Tanaka et al. 2020)",
}

#: The declared family the fit chooses from by leave-one-out error on the tune rows.
CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("log_params",),
    ("log_mflops",),
    ("quick_acc",),
    ("quick_acc", "log_params"),
    ("quick_acc", "log_mflops"),
    ("quick_acc", "quick_loss", "log_params", "log_mflops"),
    tuple(FEATURES),
)
#: Ridge strengths tried (on standardized features; the intercept is not penalized).
ALPHAS: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
#: Bootstrap refits of the chosen model for its spread (200: the 5..95 % spread is stable
#: to ~0.01 points at N ~ 20 rows; a fit takes microseconds).
N_BOOT = 200


class EstimateError(ValueError):
    """No fitted estimate applies (missing, another dataset, another budget)."""


def model_path(dataset: str) -> Path:
    slug = str(dataset).strip().lower().replace(":", "_").replace("/", "_")
    return ESTIMATES / f"{slug}.json"


def features(arch: ArchConfig, *, dataset: Dataset | str, budget: Budget | str = "quick",
             seed: int = 0, device: str | torch.device = "cpu",
             callback: Callback | None = None) -> tuple[dict[str, float], ProxyResult]:
    """The features of `arch` and the quick run they came from (its result carries the
    run's accuracy, checkpoints and cost; a failed run gives NaN features)."""
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    run = ShortTrain(dataset=data, budget=budget, seed=seed, device=device)(
        arch, callback=callback)
    return features_of_run(arch, run, dataset=data, budget=budget, seed=seed, device=device)


def features_of_run(arch: ArchConfig, run: ProxyResult, *, dataset: Dataset | str,
                    budget: Budget | str = "quick", seed: int = 0,
                    device: str | torch.device = "cpu") -> tuple[dict[str, float], ProxyResult]:
    """`features` from a quick run that already happened (`run`, the `ShortTrain` result of
    `arch` at `budget` and `seed`): only the zero-cost scores are computed here."""
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    zc = {name: ZeroCost(name, dataset=data, budget=budget, seed=seed, device=device)(arch)
          for name in ("naswot", "synflow", "params", "flops")}
    nan = math.nan

    def log10(x: float) -> float:
        return math.log10(x) if x > 0 and math.isfinite(x) else nan

    out = {
        "quick_acc": 100 * run.accuracy if run.accuracy is not None and not run.failed else nan,
        "quick_loss": (math.log(run.tse / max(run.steps, 1))
                       if run.tse and not run.failed and run.tse > 0 else nan),
        "quick_val_loss": (run.val_loss if run.val_loss is not None and not run.failed
                           else nan),
        "log_params": log10(zc["params"].score),
        "log_mflops": log10(1000 * zc["flops"].score),
        "naswot": zc["naswot"].score if not zc["naswot"].failed else nan,
        "log_synflow": log10(zc["synflow"].score) if not zc["synflow"].failed else nan,
    }
    seconds = run.seconds + sum(r.seconds for r in zc.values())
    return out, dataclasses.replace(run, seconds=seconds)


@dataclasses.dataclass(frozen=True)
class EstimateModel:
    """A fitted ridge ensemble (see the module docstring); `predict` gives (mean, se) in %."""

    dataset: str
    budget: dict[str, Any]
    seed: int
    protocol: str
    features: tuple[str, ...]
    alpha: float
    center: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    boot_coef: tuple[tuple[float, ...], ...]
    boot_intercept: tuple[float, ...]
    loo_rmse: float
    loo_tau: float
    fitted_on: tuple[str, ...]
    source: str
    date: str
    candidates: tuple[dict[str, Any], ...] = ()
    target_noise: float = 0.0
    """Seed noise of one reference run (std, points) the fit was told of (0: none)."""
    residual: float | None = None
    """The error predicting an architecture's *mean* accuracy: the leave-one-out error with
    the design rows' own seed noise (`target_noise`^2 / seeds per row) taken out; None in
    models fitted before it existed (then `loo_rmse`)."""

    def _x(self, feats: Mapping[str, float]) -> np.ndarray:
        x = np.array([feats[f] for f in self.features], dtype=float)
        return (x - np.array(self.center)) / np.array(self.scale)

    def predict(self, feats: Mapping[str, float]) -> tuple[float, float]:
        """(predicted accuracy %, standard error %) for one architecture's features."""
        x = self._x(feats)
        if not np.all(np.isfinite(x)):
            return math.nan, math.nan
        mean = float(self.intercept + x @ np.array(self.coef))
        boots = np.array(self.boot_intercept) + np.array(self.boot_coef) @ x
        residual = self.loo_rmse if self.residual is None else self.residual
        return mean, float(math.hypot(float(np.std(boots, ddof=1)), residual))

    @property
    def provenance(self) -> str:
        return (f"predicted {self.protocol} accuracy on {self.dataset} (ridge over "
                f"{', '.join(self.features)}; fitted on {len(self.fitted_on)} architectures: "
                f"{self.source}; leave-one-out error {self.loo_rmse:.2f} points"
                + (f" ({self.residual:.2f} without the reference's seed noise)"
                   if self.residual is not None and self.target_noise > 0 else "")
                + f", tau {self.loo_tau:.2f})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EstimateModel:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in fields}
        for key in ("features", "center", "scale", "coef", "boot_intercept", "fitted_on",
                    "candidates"):
            kw[key] = tuple(kw.get(key, ()))
        kw["boot_coef"] = tuple(tuple(r) for r in kw["boot_coef"])
        return cls(**kw)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, dataset: str) -> EstimateModel:
        path = model_path(dataset)
        if not path.is_file():
            raise EstimateError(
                f"no fitted accuracy estimate for dataset {dataset!r} ({path} is missing): fit "
                f"one with `python -m proxies estimate fit --dataset {dataset}` on a reference "
                "set, or choose --proxy short_train")
        return cls.from_dict(json.loads(path.read_text()))


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge on already standardized `x`; the intercept (mean of y) is not penalized."""
    ym = float(y.mean())
    xm = x.mean(axis=0)
    xc = x - xm
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return coef, ym - float(xm @ coef)


def _loo(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Leave-one-out predictions (standardization refitted without the left-out row)."""
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        c, s = x[keep].mean(axis=0), x[keep].std(axis=0) + 1e-12
        coef, b = _ridge((x[keep] - c) / s, y[keep], alpha)
        out[i] = b + ((x[i] - c) / s) @ coef
    return out


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b (scipy's; ties in the reference accuracies are common at 0.01 points)."""
    from scipy import stats

    return float(stats.kendalltau(a, b).statistic) if len(a) >= 2 else math.nan


def _seeds(row: Mapping[str, Any]) -> float:
    """How many reference seeds a design row's target averages (1 where unsaid)."""
    n = float(row.get("n_seeds", 1) or 1)
    return n if math.isfinite(n) and n >= 1 else 1.0


def fit(rows: Sequence[Mapping[str, Any]], *, target: str = "reference", dataset: str,
        budget: Budget, seed: int, protocol: str, source: str,
        candidates: Sequence[Sequence[str]] = CANDIDATES,
        alphas: Sequence[float] = ALPHAS, n_boot: int = N_BOOT,
        rng_seed: int = 0, target_noise: float = 0.0) -> EstimateModel:
    """Choose features and ridge strength by leave-one-out RMSE on `rows` (each a mapping
    with the `FEATURES` and `target`, in %), then fit the choice and its bootstrap ensemble.
    `target_noise`: the seed noise (std, points) of one run of the target; with each row's
    ``n_seeds`` (default 1) it is taken out of the residual the model states."""
    usable = [r for r in rows if math.isfinite(float(r[target]))]
    if len(usable) < 5:
        raise EstimateError(f"only {len(usable)} design architectures with a reference "
                            "accuracy: an estimate needs at least 5 (train more of the set)")
    y = np.array([float(r[target]) for r in usable])
    tried = []
    for feats in candidates:
        x = np.array([[float(r[f]) for f in feats] for r in usable])
        ok = np.all(np.isfinite(x), axis=1)
        if ok.sum() < 5:
            continue
        for alpha in alphas:
            pred = _loo(x[ok], y[ok], alpha)
            sq = (pred - y[ok]) ** 2
            tried.append({"features": list(feats), "alpha": alpha, "n": int(ok.sum()),
                          "loo_rmse": float(np.sqrt(np.mean(sq))),
                          "loo_mse_se": float(np.std(sq, ddof=1) / np.sqrt(len(sq))),
                          "loo_tau": _kendall(pred, y[ok])})
    if not tried:
        raise EstimateError("no candidate feature set is finite on 5 or more architectures")
    # The one-standard-error rule (Breiman et al., "Classification and Regression Trees",
    # 1984; Hastie et al., ESL 7.10): the simplest candidate (fewest features, then the
    # strongest ridge) whose leave-one-out MSE is within one standard error of the lowest.
    # With a few dozen noisy rows the lowest MSE alone flips between candidates row by row.
    low = min(tried, key=lambda t: t["loo_rmse"])
    bound = low["loo_rmse"] ** 2 + low["loo_mse_se"]
    best = min((t for t in tried if t["loo_rmse"] ** 2 <= bound),
               key=lambda t: (len(t["features"]), -t["alpha"], t["loo_rmse"]))
    feats = tuple(best["features"])
    x = np.array([[float(r[f]) for f in feats] for r in usable])
    ok = np.all(np.isfinite(x), axis=1)
    x, yk = x[ok], y[ok]
    ids = tuple(str(r["arch_id"]) for r, k in zip(usable, ok, strict=True) if k)
    center, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = (x - center) / scale
    coef, b = _ridge(z, yk, best["alpha"])
    rng = np.random.default_rng(rng_seed)
    boot_c, boot_b = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(yk), len(yk))
        c, bb = _ridge(z[idx], yk[idx], best["alpha"])
        boot_c.append(tuple(float(v) for v in c))
        boot_b.append(float(bb))
    seeds = np.array([_seeds(r) for r, k in zip(usable, ok, strict=True) if k])
    noise_var = float(np.mean(target_noise ** 2 / seeds))
    residual = math.sqrt(max(best["loo_rmse"] ** 2 - noise_var, 0.0))
    return EstimateModel(
        dataset=dataset, budget=dataclasses.asdict(budget), seed=seed, protocol=protocol,
        features=feats, alpha=float(best["alpha"]),
        center=tuple(float(v) for v in center), scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in coef), intercept=float(b),
        boot_coef=tuple(boot_c), boot_intercept=tuple(boot_b),
        loo_rmse=float(best["loo_rmse"]), loo_tau=float(best["loo_tau"]), fitted_on=ids,
        source=source, date=datetime.date.today().isoformat(), candidates=tuple(tried),
        target_noise=float(target_noise), residual=residual)


class Estimate:
    """The fitted estimate as a proxy: ``Estimate(dataset=..., budget="quick", seed=0)(arch)``.

    The score is the predicted reference accuracy as a fraction (so it reads like the other
    accuracy proxies); `ProxyResult.uncertainty` is its standard error (fraction). The
    callback sees the quick run's checkpoint accuracies, as with `ShortTrain`.
    """

    name = "estimate"

    def __init__(self, *, dataset: Dataset | str = "fashion-mnist",
                 budget: Budget | str = "quick", seed: int = 0, threads: int = 1,
                 device: str | torch.device = "auto", deterministic: bool = True,
                 model: EstimateModel | None = None) -> None:
        self.budget = Budget.parse(budget)
        self.dataset = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
        self.model = model or EstimateModel.load(self.dataset.name)
        compatible(self.model, dataset=self.dataset.name, budget=self.budget)
        self.seed = int(seed)
        self.threads = int(threads)
        self.device = resolve_device(device)
        self.deterministic = bool(deterministic)

    def __repr__(self) -> str:
        return f"Estimate({self.model.provenance})"

    def __call__(self, arch: ArchConfig, *, callback: Callback | None = None) -> ProxyResult:
        start = time.perf_counter()
        run = ShortTrain(dataset=self.dataset, budget=self.budget, seed=self.seed,
                         threads=self.threads, device=self.device,
                         deterministic=self.deterministic)(arch, callback=callback)
        return self.from_run(arch, run, start)

    def from_run(self, arch: ArchConfig, run: ProxyResult,
                 start: float | None = None) -> ProxyResult:
        """The estimate from a `ShortTrain` run of `arch` at this budget and seed that
        already happened (the validation scores short_train and the estimate from one run)."""
        start = time.perf_counter() - run.seconds if start is None else start
        feats, run = features_of_run(arch, run, dataset=self.dataset, budget=self.budget,
                                     seed=self.seed, device=self.device)
        if run.failed or run.stopped_early:
            return dataclasses.replace(run, proxy=self.name,
                                       seconds=time.perf_counter() - start)
        mean, se = self.model.predict(feats)
        if not math.isfinite(mean):
            bad = ", ".join(f for f in self.model.features if not math.isfinite(feats[f]))
            return dataclasses.replace(run, proxy=self.name, score=float("-inf"), failed=True,
                                       reason=f"feature(s) not finite: {bad}",
                                       seconds=time.perf_counter() - start)
        return dataclasses.replace(run, proxy=self.name, score=mean / 100,
                                   accuracy=mean / 100, uncertainty=se / 100,
                                   seconds=time.perf_counter() - start)


def compatible(model: EstimateModel, *, dataset: str, budget: Budget) -> None:
    """Raise `EstimateError` unless `model` can score `dataset` at `budget`. Another seed is
    fine (it draws the same features' distribution; the fit's leave-one-out error includes one
    seed's noise); another budget changes what the features mean."""
    if model.dataset != dataset:
        raise EstimateError(f"the estimate was fitted on {model.dataset!r}, not {dataset!r}: fit "
                            "one for this dataset or choose --proxy short_train")
    fitted = Budget(**model.budget)
    if _compare(fitted) != _compare(budget):
        raise EstimateError(f"the estimate's features come from budget {fitted}; it cannot score "
                            f"budget {budget}: keep the budget it was fitted with, refit with "
                            "--budget, or choose --proxy short_train")


def _compare(budget: Budget) -> dict[str, Any]:
    """The fields that change the features (not where or in what precision they run)."""
    out = dataclasses.asdict(budget)
    out.pop("precision", None)
    out.pop("checkpoints", None)
    return out
