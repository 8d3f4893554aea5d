"""A budgeted table: the measured rows of a sample, the rest predicted by per-kind regressors.

`build_table(..., budget_s=...)` measures the space's layer signatures in a space-filling
order (`sample.py`) until its time is up, then calls `write_budgeted_table`: it fits one
regressor per layer kind on the measured rows (`regress.py`; model form chosen by K-fold
cross-validation on those rows only), predicts every unmeasured signature, and writes one
table whose rows say which they are (`measured`: 1 or 0) and, for predicted rows, the
regressor's cross-validated error (`error_pct`, MAPE of its kind). The sidecar's `budget`
section records the budget, the time spent, the share measured and each kind's model and
error; `budget_note` turns it into the line printed wherever a latency from it is shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .layers import KINDS, LayerSig
from .regress import fit_models
from .sample import required_head

__all__ = ["BUDGET_COLUMNS", "write_budgeted_table", "budget_note"]

#: Extra columns of a budgeted table: `measured` (1/0) and the predicted rows' error (%).
BUDGET_COLUMNS = ["measured", "error_pct"]


def write_budgeted_table(csv_path: Path, measured: pd.DataFrame, sigs: list[LayerSig],
                         sidecar: dict[str, Any], *, budget_s: float | None, seconds: float,
                         elapsed_s: float) -> Path:
    """Fit, predict and write `csv_path` and its sidecar from the measured rows (one per key,
    `build.aggregate_sweeps`); raise `BudgetTooSmall` where a kind lacks the rows its
    regressor needs."""
    from .build import TABLE_COLUMNS, BudgetTooSmall

    by_key = {s.key: s for s in sigs}
    have = {k: measured[measured["kind"] == k] for k in KINDS}
    need = required_head(sigs)
    short = {k: (len(have[k]), n) for k, n in need.items() if len(have[k]) < n}
    if short:
        per_layer = seconds / max(len(measured), 1)
        missing = sum(n - h for h, n in short.values())
        what = ", ".join(f"{k} {h} of {n}" for k, (h, n) in short.items())
        raise BudgetTooSmall(
            f"--budget-minutes: too small to fit every kind's regressor (measured {what}); about "
            f"{(elapsed_s + missing * per_layer) / 60:.1f} min needed here; run the same command "
            "with a larger budget: it keeps what was measured")
    models = fit_models(
        {k: ([by_key[key] for key in rows["key"]], list(rows["ms"])) for k, rows in have.items()
         if k in need},
        {k: sorted({s.res for s in sigs if s.kind == k}) for k in need})
    rows = measured.assign(measured=1, error_pct=0.0)
    done = set(measured["key"])
    todo = [s for s in sigs if s.key not in done]
    predicted = []
    for kind, model in models.items():
        ks = [s for s in todo if s.kind == kind]
        if not ks:
            continue
        pred = pd.DataFrame([s.to_row() for s in ks])
        pred = pred.assign(ms=model.predict(ks), iqr_ms=float("nan"), p10_ms=float("nan"),
                           sweep_spread_pct=float("nan"), repeats=0, copies=0, measured=0,
                           error_pct=round(model.cv_mape_pct, 2))
        predicted.append(pred)
    table = pd.concat([rows, *predicted], ignore_index=True)[TABLE_COLUMNS + BUDGET_COLUMNS]
    order = {s.key: i for i, s in enumerate(sigs)}
    table = table.sort_values("key", key=lambda k: k.map(order)).reset_index(drop=True)
    table.to_csv(csv_path, index=False, float_format="%.5g")
    sidecar = dict(sidecar)
    sidecar["budget"] = {
        "budget_s": budget_s, "elapsed_s": round(elapsed_s, 1), "measuring_s": round(seconds, 1),
        "measured": int(len(measured)), "layers": len(sigs),
        "measured_pct": round(100 * len(measured) / len(sigs), 1),
        "sample": "space-filling per kind (latency_tables.sample)",
        "models": {k: m.to_dict() for k, m in models.items()},
        "error_pct": round(_weighted_error(models, todo), 2),
    }
    csv_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return csv_path


def _weighted_error(models: dict, todo: list[LayerSig]) -> float:
    """Cross-validated MAPE of the regressors, weighted by how many predicted rows each has."""
    counts = pd.Series([s.kind for s in todo]).value_counts()
    total = counts.sum()
    if not total:
        return 0.0
    return float(sum(models[k].cv_mape_pct * n for k, n in counts.items()) / total)


def budget_note(meta: dict[str, Any]) -> str:
    """'31 % of layers measured (473 of 1526), the rest predicted by per-kind regressors:
    cross-validated error 6.1 % per predicted layer' for a budgeted table ('every layer
    measured within the 6-min budget (212 of 1526 twice, largest spread first)' where the budget
    covered them all), else ''."""
    b = meta.get("budget")
    if not b:
        return ""
    if b["measured_pct"] >= 100:  # the budget measured every layer once, some of them again
        return (f"every layer measured within the {b['budget_s'] / 60:.3g}-min budget "
                f"({b.get('repeated', 0)} of {b['layers']} twice, largest spread first)")
    return (f"{b['measured_pct']:.0f} % of layers measured ({b['measured']} of {b['layers']}), "
            f"the rest predicted by per-kind regressors: cross-validated error "
            f"{b['error_pct']:.1f} % per predicted layer")
