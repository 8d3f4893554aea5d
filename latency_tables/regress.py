"""Per-operator latency regressors: predict the layers a budgeted build did not measure.

nn-Meter (Zhang et al., MobiSys 2021) predicts a kernel's latency from regressors fitted on
sampled configurations of that kernel. Ours are roofline-style and readable: a layer's time is
a non-negative sum of its work terms, each with one fitted constant (seconds per unit of work):

    ms = c0 + c1 * conv MACs + c2 * GEMM MACs + c3 * activation elements + ...

The terms (`TERMS`) follow what the fused layer runs (`search_space.fuse`): a FasterNet block
is a k x k convolution over `c / n_div` channels, two GEMMs through `mlp_ratio * c` hidden
channels and one activation; stem and merge are strided convolutions; the head a pooling, two
matrix products and an activation. Terms proportional to output elements (per-element
overheads) absorb the lower efficiency of narrow layers.

Each kind has a few candidate models (`CANDIDATES`: all terms for every resolution, or one set
of constants per input resolution); the choice is made by K-fold cross-validation on the
measured rows only, and the chosen model's held-out error (MAPE, share within +-10 %) is what
a table states for its predicted rows. Fits minimize the squared *relative* error with
non-negative constants (`scipy.optimize.nnls`), so every constant is a cost, never a credit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .layers import LayerSig

__all__ = ["TERMS", "CANDIDATES", "KindModel", "fit_kind", "fit_models", "min_rows", "features"]


def _block(s: LayerSig) -> dict[str, float]:
    hw, c = s.res * s.res, s.cin
    dc, hidden = c // s.n_div, int(c * s.mlp_ratio)
    gelu = s.act == "gelu"
    return {"one": 1.0,
            "conv_macs": s.kernel_size ** 2 * dc * dc * hw,  # the partial k x k convolution
            "conv_out": dc * hw * s.kernel_size,  # its per-output overhead (narrow convs)
            "gemm_macs": 2.0 * hidden * c * hw,  # the two pointwise GEMMs
            "elems": (c + hidden) * hw,  # activations read and written
            "act_gelu": hidden * hw * gelu, "act_relu": hidden * hw * (not gelu),
            "weights": s.kernel_size ** 2 * dc * dc + 2.0 * hidden * c}


def _strided(s: LayerSig) -> dict[str, float]:  # stem and merge: a stride-s convolution
    out_hw = (s.res // s.stride) ** 2
    return {"one": 1.0, "macs": s.cin * s.cout * s.stride ** 2 * out_hw,
            "in_elems": s.cin * s.res * s.res, "out_elems": s.cout * out_hw,
            "weights": s.cin * s.cout * s.stride ** 2}


def _head(s: LayerSig) -> dict[str, float]:
    gelu = s.act == "gelu"
    return {"one": 1.0, "pool": s.cin * s.res * s.res, "macs": s.cin * s.cout + s.cout * s.num_classes,
            "act_gelu": s.cout * gelu, "act_relu": s.cout * (not gelu)}


#: Work terms of each layer kind (one fitted constant each).
TERMS: dict[str, Callable[[LayerSig], dict[str, float]]] = {
    "stem": _strided, "merge": _strided, "block": _block, "head": _head}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model form: the terms used, and whether constants are fitted per input resolution."""

    name: str
    terms: tuple[str, ...] | None = None  # None: all of the kind's terms
    per_res: bool = False


#: Model forms tried for each kind, simplest first (ties go to the simpler one).
CANDIDATES: dict[str, tuple[Candidate, ...]] = {
    "stem": (Candidate("macs", ("one", "macs")), Candidate("roofline")),
    "merge": (Candidate("macs", ("one", "macs")), Candidate("roofline"),
              Candidate("roofline per resolution", per_res=True)),
    "block": (Candidate("roofline"), Candidate("roofline per resolution", per_res=True)),
    "head": (Candidate("macs", ("one", "macs", "act_gelu", "act_relu")), Candidate("roofline")),
}


def features(sigs: Sequence[LayerSig]) -> pd.DataFrame:
    """Work terms of layers of one kind, one row per layer."""
    return pd.DataFrame([TERMS[s.kind](s) for s in sigs])


def _design(sigs: Sequence[LayerSig], cand: Candidate, groups: Sequence[int]) -> np.ndarray:
    f = features(sigs)
    cols = list(cand.terms or f.columns)
    x = f[cols].to_numpy(float)
    if not cand.per_res:
        return x
    res = np.array([s.res for s in sigs])
    return np.concatenate([x * (res == g)[:, None] for g in groups], axis=1)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative constants minimizing the squared relative error (columns scaled for nnls)."""
    a = x / y[:, None]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, np.ones_like(y), maxiter=50 * a.shape[1])
    return coef / scale


def min_rows(kind: str) -> int:
    """Measured rows a kind needs before its simplest model (never per resolution) can be
    fitted and cross-validated: one per constant, and two more."""
    simplest = CANDIDATES[kind][0]
    return len(simplest.terms or TERMS[kind](_probe(kind))) + 2


def _probe(kind: str) -> LayerSig:
    return LayerSig(kind, 8, 8, 8, stride=2, n_div=2, mlp_ratio=2.0, kernel_size=3, act="relu",
                    num_classes=10)


@dataclasses.dataclass(frozen=True)
class KindModel:
    """The fitted model of one layer kind and its cross-validated error on the measured rows."""

    kind: str
    form: str
    n_measured: int
    cv_mape_pct: float
    cv_within_10_pct: float
    coef: dict[str, float]
    _cand: Candidate
    _groups: tuple[int, ...]

    def predict(self, sigs: Sequence[LayerSig]) -> np.ndarray:
        """Predicted ms per batch of each layer."""
        x = _design(sigs, self._cand, self._groups)
        return x @ np.array(list(self.coef.values()))

    def to_dict(self) -> dict[str, object]:
        return {"form": self.form, "n_measured": self.n_measured, "cv_mape_pct": self.cv_mape_pct,
                "cv_within_10_pct": self.cv_within_10_pct,
                "coef": {k: float(f"{v:.6g}") for k, v in self.coef.items() if v}}


def _cv(sigs: list[LayerSig], y: np.ndarray, cand: Candidate, groups: tuple[int, ...],
        folds: int, rng: np.random.Generator) -> np.ndarray:
    """Held-out relative errors (%) of `cand`, K-fold."""
    fold = rng.permutation(len(sigs)) % folds
    x = _design(sigs, cand, groups)
    err = np.empty(len(sigs))
    for k in range(folds):
        test = fold == k
        coef = _fit(x[~test], y[~test])
        err[test] = (x[test] @ coef / y[test] - 1) * 100
    return err


def fit_kind(kind: str, sigs: Sequence[LayerSig], ms: Sequence[float], *,
             all_res: Sequence[int] = (), folds: int = 5, seed: int = 0) -> KindModel:
    """Fit every candidate form of `kind` on the measured (`sigs`, `ms`), keep the one with the
    lowest K-fold MAPE (a form per resolution only where every resolution in `all_res` has
    measured rows), and refit it on all measured rows."""
    sigs, y = list(sigs), np.asarray(ms, float)
    if len(sigs) < min_rows(kind):
        raise ValueError(f"{kind}: {len(sigs)} measured rows, the regressor needs at least "
                         f"{min_rows(kind)}")
    groups = tuple(sorted(set(all_res) | {s.res for s in sigs}))
    folds = min(folds, len(sigs))
    best: tuple[float, Candidate, np.ndarray] | None = None
    for cand in CANDIDATES[kind]:
        if cand.per_res:
            counts = pd.Series([s.res for s in sigs]).value_counts()
            n_terms = len(cand.terms or TERMS[kind](sigs[0]))
            if any(counts.get(g, 0) < 2 * n_terms for g in groups):
                continue
        err = _cv(sigs, y, cand, groups, folds, np.random.default_rng(seed))
        mape = float(np.abs(err).mean())
        if best is None or mape < best[0] * 0.97:  # a richer form must win by 3 % (relative)
            best = (mape, cand, err)
    assert best is not None
    mape, cand, err = best
    x = _design(sigs, cand, groups)
    coef = _fit(x, y)
    names = list(cand.terms or features(sigs[:1]).columns)
    if cand.per_res:
        names = [f"{n}@r{g}" for g in groups for n in names]
    return KindModel(kind, cand.name, len(sigs), mape, float((np.abs(err) <= 10).mean() * 100),
                     dict(zip(names, coef)), cand, groups)


def fit_models(measured: dict[str, tuple[list[LayerSig], list[float]]],
               all_res: dict[str, Sequence[int]]) -> dict[str, KindModel]:
    """One `KindModel` per kind from `{kind: (signatures, ms)}` of the measured rows."""
    return {kind: fit_kind(kind, sigs, ms, all_res=all_res.get(kind, ()))
            for kind, (sigs, ms) in measured.items()}
