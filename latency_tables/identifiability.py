"""Which constants of a derived profile do the published rows determine, and how well?

For each fitted constant of a `DeviceProfile` (`DeviceProfile.constant_names`) three
numbers, all from the fit's own objective (`profile_fit`):

- **moved**: fitted value / prior centre (`profile_fit.INITIAL`). A factor of exactly 1 means
  the data never pulled on it.
- **spread**: the 5th..95th percentile of the constant over a bootstrap of the fit's rows
  (networks and operator rows resampled with replacement, `N_BOOT` refits from the same
  prior; a row drawn c times weighs sqrt(c) on its residual, i.e. c times in the loss), and
  the range over the leave-one-out refits (one network held out at a time, as the reported
  error is measured).
- **contraction**: 1 - posterior variance / prior variance of the log-constant in the
  Gauss-Newton approximation at the fit (the loss's curvature: J'J of the data residuals
  plus the prior's PRIOR_WEIGHT^2 I), the "posterior contraction" of Schad, Betancourt and
  Vasishth ("Toward a principled Bayesian workflow in cognitive science", Psychological
  Methods 2021). 0: the data add nothing to the prior; 1: the data alone fix the constant.

Rule (stated once, here): a constant **rests on its prior** when its contraction is below
`PRIOR_BOUND` (the data shrink the prior's variance by less than half); it is **loose** when
the data do constrain it but its bootstrap 90 % interval spans more than a factor
`LOOSE_FACTOR`; otherwise it is **determined**.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .cost_model import DeviceProfile
from .profile_fit import INITIAL, PRIOR_WEIGHT, FitData, fit_profile

__all__ = ["LOOSE_FACTOR", "N_BOOT", "PRIOR_BOUND", "ConstantSpread", "Identifiability",
           "identifiability", "render_markdown"]

#: Contraction below which a constant rests on its prior (variance shrunk by less than half).
PRIOR_BOUND = 0.5
#: Bootstrap 5..95 % interval wider than this factor: the constant is loose.
LOOSE_FACTOR = 2.0
#: Bootstrap refits per device (each ~0.05 s).
N_BOOT = 200
#: Step of the central differences in log space (0.01 %: well inside every kink of max()).
_STEP = 1e-4


@dataclasses.dataclass(frozen=True)
class ConstantSpread:
    """One constant: prior centre, fitted value, bootstrap and leave-one-out spread, verdict."""

    name: str
    prior: float
    fitted: float
    boot_p05: float
    boot_p95: float
    loo_min: float
    loo_max: float
    contraction: float
    verdict: str  # "determined" | "loose" | "prior"

    @property
    def moved(self) -> float:
        """Fitted / prior (1.0: not moved)."""
        return self.fitted / self.prior


@dataclasses.dataclass(frozen=True)
class Identifiability:
    """The constants of one device's profile, with the rule's parameters."""

    device: str
    constants: tuple[ConstantSpread, ...]
    n_boot: int
    seed: int

    def names(self, verdict: str) -> list[str]:
        return [c.name for c in self.constants if c.verdict == verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"rule": f"rests on prior: contraction < {PRIOR_BOUND}; loose: bootstrap 5-95 % "
                        f"interval > x{LOOSE_FACTOR}", "n_boot": self.n_boot, "seed": self.seed,
                "resting_on_prior": self.names("prior"), "loose": self.names("loose"),
                "constants": {c.name: {"prior": c.prior, "fitted": c.fitted, "moved": c.moved,
                                       "boot_p05": c.boot_p05, "boot_p95": c.boot_p95,
                                       "loo_min": c.loo_min, "loo_max": c.loo_max,
                                       "contraction": c.contraction, "verdict": c.verdict}
                              for c in self.constants}}


def _data_residuals(data: FitData, form: DeviceProfile, theta: np.ndarray) -> np.ndarray:
    pred = data.arrays.totals_ms(theta, form)
    return data.weights * (np.log(pred) - np.log(data.measured_ms))


def contraction(data: FitData, profile: DeviceProfile) -> np.ndarray:
    """Posterior contraction of each log-constant at the fit (see the module docstring)."""
    theta = profile.to_vector()
    jac = np.empty((len(data.measured_ms), len(theta)))
    for j in range(len(theta)):
        d = np.zeros_like(theta)
        d[j] = _STEP
        jac[:, j] = (_data_residuals(data, profile, theta + d)
                     - _data_residuals(data, profile, theta - d)) / (2 * _STEP)
    prior_prec = PRIOR_WEIGHT ** 2
    cov = np.linalg.inv(jac.T @ jac + prior_prec * np.eye(len(theta)))
    return 1.0 - prior_prec * np.diag(cov)


def identifiability(device: str, data: FitData, profile: DeviceProfile, *,
                    prior: DeviceProfile | None = None, n_boot: int = N_BOOT,
                    seed: int = 0) -> Identifiability:
    """Spread and contraction of every constant of `profile` (fitted on `data`)."""
    prior = prior or INITIAL[device]
    rng = np.random.default_rng(seed)
    n = len(data.measured_ms)
    boot = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        sub = dataclasses.replace(data, weights=data.weights * np.sqrt(counts))
        boot.append(fit_profile(device, sub, start=prior).to_vector())
    loo = []
    for i in np.flatnonzero(data.is_network):
        w = data.weights.copy()
        w[i] = 0.0
        loo.append(fit_profile(device, dataclasses.replace(data, weights=w), start=prior).to_vector())
    bv, lv = np.exp(np.array(boot)), np.exp(np.array(loo))
    con = contraction(data, profile)
    rows = []
    for j, name in enumerate(profile.constant_names()):
        p05, p95 = np.percentile(bv[:, j], [5, 95])
        verdict = ("prior" if con[j] < PRIOR_BOUND else
                   "loose" if p95 / p05 > LOOSE_FACTOR else "determined")
        rows.append(ConstantSpread(name, float(np.exp(prior.to_vector()[j])),
                                   float(np.exp(profile.to_vector()[j])), float(p05), float(p95),
                                   float(lv[:, j].min()), float(lv[:, j].max()), float(con[j]),
                                   verdict))
    return Identifiability(device, tuple(rows), n_boot, seed)


_VERDICT = {"determined": "determined", "loose": "loose",
            "prior": "**rests on its prior**"}


def render_markdown(ident: Identifiability) -> list[str]:
    """The identifiability section of `reports/derived_<device>.md`."""
    lines = ["## Identifiability of the profile's constants", "",
             f"Prior centre: `profile_fit.INITIAL[{ident.device!r}]`. Spread: 5..95 % over "
             f"{ident.n_boot} bootstrap refits (rows resampled with replacement, seed "
             f"{ident.seed}) and min..max over the leave-one-out refits. Contraction: 1 - "
             "posterior / prior variance of the log-constant at the fit (Gauss-Newton). Rule: "
             f"a constant **rests on its prior** if its contraction is < {PRIOR_BOUND}; it is "
             f"loose if its bootstrap 5..95 % interval spans more than x{LOOSE_FACTOR} "
             "(`latency_tables/identifiability.py`).", "",
             "| constant | prior | fitted | moved | bootstrap 5..95 % | leave-one-out range | "
             "contraction | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in ident.constants:
        lines.append(f"| {c.name} | {c.prior:.4g} | {c.fitted:.4g} | x{c.moved:.3g} | "
                     f"{c.boot_p05:.4g} .. {c.boot_p95:.4g} | {c.loo_min:.4g} .. {c.loo_max:.4g} | "
                     f"{c.contraction:.2f} | {_VERDICT[c.verdict]} |")
    prior = ident.names("prior")
    lines += ["", "Constants resting on their prior (the published rows do not determine them): "
              + (", ".join(f"`{n}`" for n in prior) if prior else "none") + "."]
    loose = ident.names("loose")
    if loose:
        lines.append("Loose (constrained, but uncertain by more than a factor "
                     f"{LOOSE_FACTOR:g}): " + ", ".join(f"`{n}`" for n in loose) + ".")
    return lines
