"""Derived latency tables: calibrate the cost model on published figures, then tabulate.

`calibrate_published(device)` (what `python -m latency_tables calibrate --device NAME` runs
for a device with published figures, `devices.derivable_devices()`: the paper's arm, cpu and
gpu) traces the paper's networks and operators (`published`), fits the device profile
(`profile_fit`), measures the fit's leave-one-out error over networks, writes the profile
to `profiles/<device>.json` and the error report to `reports/derived_<device>.{md,csv}`,
and then `derive_table` writes `tables/<device>.csv` + `.json`. Everything device-specific
(published column, protocol batch, latency or throughput, sidecar facts) comes from the
device's `DeviceSpec` (`devices.py`).

A derived table has the columns and sidecar of a measured one (`build.TABLE_COLUMNS`), with
`"source": "derived"`; each row is the cost-model time (ms per batch of the protocol) of the
deployment-form layer `layers.make_layer(sig)` that a measured build would time.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from search_space import SearchSpace

from .build import TABLE_COLUMNS
from .cost_model import DeviceProfile, predict_ms, trace
from .devices import DEVICES, derivable_devices, derivable_spec, resolve_alias
from .identifiability import Identifiability, identifiability, render_markdown
from .layers import LAYER_KEY_VERSION, LayerSig, make_layer, space_layers
from .profile_fit import fit_data, fit_profile, leave_one_out, not_built
from .published import NETWORKS, published_traces
from .validate import Accuracy

__all__ = ["PROFILES_DIR", "REPORTS_DIR", "Calibration", "calibrate_published", "derive_table",
           "load_profile"]

PROFILES_DIR = Path(__file__).with_name("profiles")
REPORTS_DIR = Path(__file__).with_name("reports")
_SHIPPED = Path(__file__).with_name("tables")


def load_profile(device: str) -> DeviceProfile:
    """The committed profile of a derivable device (`arm`, `cpu`, `gpu`, or an alias)."""
    return DeviceProfile.load(PROFILES_DIR / f"{resolve_alias(device)}.json")


def _relpath(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return str(p)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Result of `calibrate_published`: profile, LOO rows and accuracy, identifiability, files."""

    profile: DeviceProfile
    loo: pd.DataFrame
    accuracy: dict[str, Accuracy]
    identifiability: Identifiability
    files: list[Path]


def derive_table(device: str, profile: DeviceProfile, *, space: SearchSpace | None = None,
                 resolution: int = 224, out_dir: str | Path = _SHIPPED,
                 layers: list[LayerSig] | None = None, in_chans: int = 3,
                 num_classes: int = 1000, provenance: dict[str, Any] | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write `<out_dir>/<device>.csv` + `.json`: every layer of `space`, timed by the model.

    Returns the CSV path. Rows are ms per batch of `profile.batch` (as measured tables).
    """
    space = space or SearchSpace.default()
    sigs = layers if layers is not None else space_layers(space, resolution, in_chans, num_classes)
    rows = []
    torch.manual_seed(0)
    for i, sig in enumerate(sigs):
        module, x = make_layer(sig, 1)  # traced at batch 1; costs scale to the profile's batch
        ms = predict_ms(trace(module, x), profile)
        rows.append({**sig.to_row(), "ms": ms, "iqr_ms": 0.0, "p10_ms": ms,
                     "sweep_spread_pct": 0.0, "repeats": 0, "copies": 0})
        if progress:
            progress(i + 1, len(sigs), sig.key)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{device}.csv"
    pd.DataFrame(rows, columns=TABLE_COLUMNS).to_csv(csv_path, index=False, float_format="%.5g")
    spec = DEVICES.get(device)  # None: an undeclared device (its sidecar says less)
    sidecar = {
        "layer_key_version": LAYER_KEY_VERSION,
        "name": device, "source": "derived",
        "device": {**(spec.hardware if spec else {}), "torch": torch.__version__,
                   "description": spec.description if spec else device},
        "target": spec.target if spec else "cpu", "batch": profile.batch,
        "threads": spec.threads if spec else 1, "resolution": resolution, "in_chans": in_chans,
        "num_classes": num_classes,
        "protocol": {"statistic": "cost-model estimate (ms per batch); no timing",
                     "published_protocol": spec.published_protocol if spec else None},
        "space": space.source, "layers": len(rows),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "correction": None,
        "derived": {"cost_model": "latency_tables.cost_model (per-operator roofline + overheads)",
                    "profile": _relpath(PROFILES_DIR / f"{device}.json"),
                    "profile_constants": {k: v for k, v in profile.to_dict().items() if k != "fit"},
                    "measure_command": spec.measure_command if spec else None,
                    "measure_on": spec.measure_on if spec else None,
                    "description": spec.description if spec else None, **(provenance or {})},
    }
    (out_dir / f"{device}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return csv_path


def _one_of(names: list[str]) -> str:
    """`a, b or c`."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _acc_dict(a: Accuracy) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in dataclasses.asdict(a).items()}


def calibrate_published(device: str, *, space: SearchSpace | None = None, resolution: int = 224,
                        profiles_dir: str | Path = PROFILES_DIR,
                        reports_dir: str | Path = REPORTS_DIR, tables_dir: str | Path = _SHIPPED,
                        progress: Callable[[int, int, str], None] | None = None) -> Calibration:
    """Fit `device`'s profile on the published rows, report LOO error, derive its table (every
    layer of `space`, default the default space, at `resolution` pixels)."""
    device = resolve_alias(device)
    if device not in derivable_devices():
        raise ValueError(f"--device: {device!r} has no published figures; choose "
                         f"{_one_of(derivable_devices())}")
    nets, ops = published_traces()
    loo, acc = leave_one_out(device, nets, ops)
    data = fit_data(device, nets, ops)
    col = derivable_spec(device).published_column
    loo_info = {k: _acc_dict(v) for k, v in acc.items()}
    worst = loo.loc[loo["error_pct"].abs().idxmax()]
    loo_info["worst"] = {"network": str(worst["network"]),
                         "error_pct": round(float(worst["error_pct"]), 2)}
    profile = fit_profile(device, data, leave_one_out=loo_info,
                          not_built=not_built(device), published_column=col,
                          traced_networks={n: dataclasses.asdict(s) for n, s in NETWORKS.items()
                                           if n in data.names})
    ident = identifiability(device, data, profile)
    profile = dataclasses.replace(profile, fit={**profile.fit, "identifiability": ident.to_dict()})
    files = [profile.save(Path(profiles_dir) / f"{device}.json")]
    files += write_report(device, profile, loo, acc, Path(reports_dir), ident)
    prov = {"published_rows": data.names, "published_column": col,
            "published_source": "FasterNet (Chen et al., CVPR 2023) Table 1 + comparison table; "
                                "latency_tables/profiles/published_*.csv",
            "leave_one_out": loo_info, "not_built": not_built(device),
            "resting_on_prior": ident.names("prior"),
            "report": _relpath(Path(reports_dir) / f"derived_{device}.md")}
    files.append(derive_table(device, profile, space=space, resolution=resolution,
                              out_dir=tables_dir, provenance=prov, progress=progress))
    return Calibration(profile, loo, acc, ident, files)


def write_report(device: str, profile: DeviceProfile, loo: pd.DataFrame,
                 acc: dict[str, Accuracy], out: Path,
                 ident: Identifiability | None = None) -> list[Path]:
    """`derived_<device>.csv` (per-network LOO rows) and `.md` (profile + error summary)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"derived_{device}.csv", out / f"derived_{device}.md"
    loo.to_csv(csv_path, index=False, float_format="%.4f")
    spec = derivable_spec(device)
    unit = "images/s" if spec.throughput else "ms"
    lines = [f"# Derived latency model: `{device}` — {spec.description}", "",
             "Per-operator roofline cost model (`latency_tables/cost_model.py`) fitted to the "
             "FasterNet paper's published figures (`latency_tables/profiles/published_*.csv`). "
             "Errors below are **leave-one-out over networks**: each network is predicted by a "
             "profile fitted without it.", "",
             "| networks | N | MAPE | within ±10 % | Kendall tau | mean error |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, a in acc.items():
        lines.append(f"| {k} | {a.n} | {a.mape_pct:.1f} % | {a.within_10_pct:.0f} % | "
                     f"{a.kendall_tau:.3f} | {a.mean_error_pct:+.1f} % |")
    lines += ["", f"| network | published ({unit}) | leave-one-out ({unit}) | error (time) |",
              "| --- | --- | --- | --- |"]
    for _, r in loo.iterrows():
        if spec.throughput:
            m, p = r["measured_fps"], r["loo_fps"]
        else:
            m, p = r["measured_ms_per_batch"], r["loo_ms_per_batch"]
        lines.append(f"| {r['network']} | {m:.1f} | {p:.1f} | {r['error_pct']:+.1f} % |")
    lines += ["", "Fitted profile (all networks and operator rows):", "", "```json",
              json.dumps({k: v for k, v in profile.to_dict().items() if k != "fit"}, indent=2),
              "```", ""]
    if ident is not None:
        lines += render_markdown(ident) + [""]
    lines += ["Not built (published rows without a network here):", ""]
    lines += [f"- {n}: {why}" for n, why in not_built(device).items()] or ["- none"]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def protocol_batch(device: str) -> int:
    """Images per pass in a derivable device's protocol (`DeviceSpec.batch`)."""
    return derivable_spec(resolve_alias(device)).batch
