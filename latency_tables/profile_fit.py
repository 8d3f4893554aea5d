"""Fit a `DeviceProfile` to published whole-network and operator latencies.

Least squares on log(predicted / measured) (scipy's trust-region reflective solver), so a
10 % miss on a 9 ms network weighs as much as one on a 3 s network. Residuals: every
published network the device has a figure for (weight 1), every operator row of the paper's
operator table (weight `OPERATOR_WEIGHT`: ten stacked layers of one operator pin down the
per-kind rates, but the search lives on whole networks), and a weak prior pulling each
log-parameter towards a plausible starting value (`PRIOR_WEIGHT`), which keeps rarely
exercised constants (the attention-matmul rate, a GPU's group overhead) finite when held-out
networks take away the only rows that see them.

The reported error is leave-one-out over networks: each network is predicted by a profile
fitted without it (operator rows always kept), as in the error reported by nn-Meter (Zhang
et al., MobiSys 2021) on held-out models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from .cost_model import DeviceProfile, OpArrays, OpTrace
from .devices import DeviceSpec, SpecView, derivable_spec
from .published import NOT_BUILT, is_fasternet, load_networks, load_operators, operator_name
from .validate import Accuracy, accuracy

__all__ = ["ACTIVATION_COSTS", "INITIAL", "OPERATOR_WEIGHT", "PRIOR_WEIGHT", "FitData", "fit_data",
           "fit_profile", "leave_one_out"]

#: Weight of one operator-table row relative to one network in the fit.
OPERATOR_WEIGHT = 0.5
#: Weight of the prior on each log-parameter (a factor e away costs like a 5 % miss x 2).
PRIOR_WEIGHT = 0.1

#: Starting point and prior centre of each derivable device's fit: `DeviceSpec.prior_profile()`
#: (datasheet-level guesses, declared with the device in `devices.py`).
INITIAL: Mapping[str, DeviceProfile] = SpecView(DeviceSpec.prior_profile)
#: Transcendental-activation cost / ReLU's, per device: measured, never fitted
#: (`DeviceSpec.activation_cost`, declared with the device in `devices.py`).
ACTIVATION_COSTS: Mapping[str, tuple[float, str]] = SpecView(lambda spec: spec.activation_cost)


@dataclasses.dataclass
class FitData:
    """Targets of a fit: names, measured ms per batch, residual weights, packed traces."""

    names: list[str]
    is_network: np.ndarray
    measured_ms: np.ndarray
    weights: np.ndarray
    arrays: OpArrays


def _to_ms(value: float, throughput: bool, batch: int) -> float:
    """A published figure as ms per batch: ms as is (batch 1), images/s -> ms per batch."""
    return batch * 1000.0 / value if throughput else value


def fit_data(device: str, nets: dict[str, OpTrace], ops: dict[str, OpTrace],
             exclude: Sequence[str] = ()) -> FitData:
    """Published rows of `device` that have a trace (minus `exclude`)."""
    spec = derivable_spec(device)
    col, thr, batch = spec.published_column, spec.throughput, spec.batch
    names, is_net, meas, w, traces = [], [], [], [], []
    for _, row in load_networks().iterrows():
        if row.network in nets and row.network not in exclude and pd.notna(row[col]):
            names.append(row.network)
            is_net.append(True)
            meas.append(_to_ms(float(row[col]), thr, batch))
            w.append(1.0)
            traces.append(nets[row.network])
    for _, row in load_operators().iterrows():
        name = operator_name(row)
        if name in ops and pd.notna(row[col.replace("_ms", "_ms")]):
            names.append(name)
            is_net.append(False)
            meas.append(_to_ms(float(row[col]), thr, batch))
            w.append(OPERATOR_WEIGHT)
            traces.append(ops[name])
    return FitData(names, np.array(is_net), np.array(meas), np.array(w),
                   OpArrays(traces, batch))


def fit_profile(device: str, data: FitData, start: DeviceProfile | None = None,
                **fit_info: object) -> DeviceProfile:
    """Least-squares fit of the profile's constants to `data` (see the module docstring)."""
    start = start or derivable_spec(device).prior_profile()
    theta0 = start.to_vector()
    logm = np.log(data.measured_ms)

    def residuals(theta: np.ndarray) -> np.ndarray:
        pred = data.arrays.totals_ms(theta, start)
        return np.concatenate([data.weights * (np.log(pred) - logm),
                               PRIOR_WEIGHT * (theta - theta0)])

    res = least_squares(residuals, theta0, method="trf", x_scale=1.0, max_nfev=2000)
    pred = data.arrays.totals_ms(res.x, start)
    err = (pred / data.measured_ms - 1) * 100
    nets = data.is_network
    info = {"rows": list(data.names), "networks": int(nets.sum()),
            "operator_rows": int((~nets).sum()), "in_sample_network_mape_pct":
            float(np.abs(err[nets]).mean()) if nets.any() else None,
            "in_sample_operator_mape_pct": float(np.abs(err[~nets]).mean()) if (~nets).any() else None,
            "operator_weight": OPERATOR_WEIGHT, "prior_weight": PRIOR_WEIGHT,
            "objective": "least squares on log(pred/measured), scipy trf", **fit_info}
    return start.with_vector(res.x, **info)


def leave_one_out(device: str, nets: dict[str, OpTrace],
                  ops: dict[str, OpTrace]) -> tuple[pd.DataFrame, dict[str, Accuracy]]:
    """Per-network LOO predictions and accuracy over all networks and FasterNet only.

    Rows: network, measured and predicted in the protocol's unit (ms per image on CPU/ARM,
    images/s on GPU), `error_pct` of the LOO prediction of time (ms per image).
    """
    full = fit_data(device, nets, ops)
    rows = []
    for name in [n for n, is_net in zip(full.names, full.is_network) if is_net]:
        prof = fit_profile(device, fit_data(device, nets, ops, exclude=[name]))
        one = OpArrays([nets[name]], prof.batch)
        ms = float(one.totals_ms(prof.to_vector(), prof)[0])
        meas = float(full.measured_ms[full.names.index(name)])
        rows.append({"network": name, "fasternet": is_fasternet(name),
                     "measured_ms_per_batch": meas, "loo_ms_per_batch": ms,
                     "error_pct": (ms / meas - 1) * 100})
    df = pd.DataFrame(rows)
    spec = derivable_spec(device)
    b = spec.batch
    if spec.throughput:
        df["measured_fps"] = b * 1000 / df["measured_ms_per_batch"]
        df["loo_fps"] = b * 1000 / df["loo_ms_per_batch"]
    acc = {"all": accuracy(df["measured_ms_per_batch"], df["loo_ms_per_batch"])}
    fn = df[df["fasternet"]]
    acc["fasternet"] = accuracy(fn["measured_ms_per_batch"], fn["loo_ms_per_batch"])
    return df, acc


def not_built(device: str) -> dict[str, str]:
    """Published rows with a figure for `device` that no trace covers, with the reason."""
    col = derivable_spec(device).published_column
    df = load_networks()
    return {n: NOT_BUILT[n] for n in df[df[col].notna()]["network"] if n in NOT_BUILT}
