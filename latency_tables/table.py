"""`LatencyTable`: predict an architecture's latency from a table of per-layer latencies.

A table is `<name>.csv` (one row per layer signature, `latency_tables.layers`) plus a
`<name>.json` sidecar with its provenance (`source`: "measured" or "derived", the device, the
protocol, and an optional linear `correction` fitted on calibration networks) and its
`layer_key_version` (absent: 1; a table of another version than `layers.LAYER_KEY_VERSION`
fails on load with the command that rebuilds it). Prediction is
the kernel-level sum of nn-Meter (Zhang et al., MobiSys 2021): the latencies of an
architecture's layers, looked up in a dict keyed by signature, summed, then corrected:

    ms per batch = scale * sum(layer ms) + offset_ms         (scale 1, offset 0 without one)

Tables are found in `latency_tables/tables/` (shipped) and then in the user directory
`$PCONV_NAS_TABLES`, default `~/.cache/pconv-nas/tables`. The name "auto" means this
machine's table: its GPU's (the GPU name, slugified) where CUDA is available and such a
table exists, else its CPU's (the CPU model, slugified; `_device.default_device_name`), each
first under the name that adds this machine's hardware id (`fingerprint.local_table_name`).
A measured table may not hold on another machine of the same model: `trust.verify`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from search_space import ArchConfig, SearchSpace

from ._device import default_device_name
from .budget import budget_note
from .devices import resolve_alias
from .fingerprint import hardware_id
from .layers import LAYER_KEY_VERSION, arch_layers, space_layers

__all__ = ["LatencyTable", "MissingLayerError", "TableNotFoundError", "TableVersionError",
           "available", "SHIPPED_DIR", "user_dir"]

#: Tables that ship with the package.
SHIPPED_DIR = Path(__file__).with_name("tables")


def user_dir() -> Path:
    """User tables: `$PCONV_NAS_TABLES`, default `~/.cache/pconv-nas/tables`."""
    return Path(os.environ.get("PCONV_NAS_TABLES", Path.home() / ".cache" / "pconv-nas" / "tables"))


def _search_dirs() -> list[Path]:
    return [SHIPPED_DIR, user_dir()]


def available() -> list[str]:
    """Names of the shipped and user tables (a CSV with its JSON sidecar), sorted."""
    names = set()
    for d in _search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.csv")
                         if not p.stem.endswith(".partial") and p.with_suffix(".json").exists())
    return sorted(names)


class TableNotFoundError(LookupError):
    """No table of that name; the message lists the known ones."""


class TableVersionError(ValueError):
    """A table whose layer keys are of another format version (`layers.LAYER_KEY_VERSION`)."""


class MissingLayerError(KeyError):
    """A layer of an architecture has no row in the table (never predicted as zero)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _auto_name() -> str:
    """This machine's table: its GPU's where CUDA is available and `build --target cuda`
    wrote one, else its CPU's; for each, first the one named after this machine's hardware
    (`amd-epyc-3f2a1c`, `fingerprint.local_table_name`: what a build suggested by a failed
    verification writes), then the model's plain name."""
    models = [default_device_name()]
    if torch.cuda.is_available():
        models.insert(0, default_device_name("cuda"))
    hw = hardware_id()
    stems = [s for m in models for s in (f"{m}-{hw}", m)]
    for stem in stems:
        if any((d / f"{stem}.csv").exists() for d in _search_dirs()):
            return stem
    return models[0]


class LatencyTable:
    """Per-layer latencies of one device; use `LatencyTable.load(name)`.

    Args:
        rows: the table (columns of `build.TABLE_COLUMNS`; `key` and `ms` are required).
        meta: the JSON sidecar (provenance).
        name: the table name.
    """

    def __init__(self, *, rows: pd.DataFrame, meta: dict[str, Any], name: str) -> None:
        for col in ("key", "ms"):
            if col not in rows.columns:
                raise ValueError(f"{name}: table has no column {col!r}")
        self.name = name
        self.meta = meta
        self.rows = rows
        self._ms: dict[str, float] = dict(zip(rows["key"], rows["ms"].astype(float)))
        #: Keys of rows predicted by a budgeted build's regressors (`budget.py`), not measured.
        self.predicted_keys: frozenset[str] = frozenset(
            rows.loc[rows["measured"] == 0, "key"] if "measured" in rows.columns else ())
        self._memo: dict[tuple[ArchConfig, int], list[tuple[str, str, float]]] = {}
        corr = meta.get("correction") or {}
        # A table rescaled to another machine by its probes (`trust.calibrated`): one factor.
        factor = float((meta.get("calibration") or {}).get("factor", 1.0))
        self.scale = float(corr.get("scale", 1.0)) * factor
        self.offset_ms = float(corr.get("offset_ms", 0.0)) * factor

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name: str | Path) -> LatencyTable:
        """A table by name (see `available()`), "auto" for this machine, or a CSV path."""
        path = Path(name)
        if path.suffix != ".csv":
            stem = _auto_name() if str(name) == "auto" else resolve_alias(str(name))
            found = [d / f"{stem}.csv" for d in _search_dirs() if (d / f"{stem}.csv").exists()]
            if not found:
                known = ", ".join(available()) or "none"
                raise TableNotFoundError(
                    f"no latency table named {stem!r} (known: {known}); measure one with "
                    f"`python -m latency_tables build --device {stem}`")
            path = found[0]
        if not path.exists():
            raise TableNotFoundError(f"{path}: no such latency table")
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {"source": "unknown"}
        meta["_path"] = str(sidecar)
        table = cls(rows=pd.read_csv(path), meta=meta, name=path.stem)
        found = meta.get("layer_key_version", 1)  # sidecars before the field have version 1
        if found != LAYER_KEY_VERSION:
            raise TableVersionError(
                f"{path}: layer keys of version {found}, this code reads version "
                f"{LAYER_KEY_VERSION}; rebuild the table with `{table.rebuild_command(meta.get('space'))}`")
        return table

    # ------------------------------------------------------------------ provenance
    @property
    def source(self) -> str:
        """"measured" (timed on the device) or "derived" (cost model)."""
        return str(self.meta.get("source", "unknown"))

    @property
    def runtime(self) -> str:
        """The runtime its layers were timed in ("eager" for tables without the field)."""
        return str(self.meta.get("runtime", "eager"))

    @property
    def form(self) -> str:
        """The deployment form its layers were built in ("fused" for tables without the field)."""
        return str(self.meta.get("form", "fused"))

    def runtime_label(self) -> str:
        """"executorch 1.5.1 XNNPACK, timm form", "eager PyTorch 2.14.1, fused form"."""
        from .runtimes import RUNTIMES

        version = self.meta.get("runtime_version") or self.meta.get("device", {}).get("torch", "?")
        rt = RUNTIMES.get(self.runtime)
        label = rt.label.format(version=version) if rt else f"{self.runtime} {version}"
        return f"{label}, {self.form} form"

    def check_runtime(self, runtime: str) -> None:
        """Raise `RuntimeMismatch` (one line) unless the table was measured in `runtime`."""
        from .runtimes import RuntimeMismatch, get_runtime

        get_runtime(runtime)
        if runtime != self.runtime:
            raise RuntimeMismatch(
                f"--runtime {runtime}: table {self.name!r} was measured in {self.runtime}, not "
                f"{runtime}; measure one with `python -m latency_tables build --runtime {runtime}`")

    @property
    def batch(self) -> int:
        return int(self.meta.get("batch", 1))

    @property
    def resolution(self) -> int:
        return int(self.meta.get("resolution", 224))

    @property
    def throughput(self) -> bool:
        """Whether the table follows a throughput protocol (batch > 1, e.g. GPU at 32)."""
        return self.batch > 1

    def rebuild_command(self, space: str | Path | None = None, resolution: int | None = None) -> str:
        """The command that rewrites this table with every layer of `space` at `resolution`
        (default: the table's).

        A derived table is re-derived from its cost model (`calibrate`, on any machine); only a
        measured table is measured again (`build` with its own protocol, on its device): a build
        here for a derived name would label this machine's timings as that device's.
        """
        res = self.resolution if resolution is None else resolution
        where = f"--space {space or '<space.yaml containing it>'} --resolution {res}"
        if self.source == "derived":
            return f"python -m latency_tables calibrate --device {self.name} {where}"
        protocol = "".join(f" --{k} {self.meta[k]}" for k in ("target", "batch", "threads")
                           if self.meta.get(k) is not None)
        if self.runtime != "eager":
            protocol += f" --runtime {self.runtime} --form {self.form}"
        return f"python -m latency_tables build --device {self.name} {where}{protocol}"

    def extend_hint(self, space: str | Path | None = None, resolution: int | None = None) -> str:
        """The end of a missing-layer message: `rebuild_command`, and where to run it."""
        command = self.rebuild_command(space, resolution)
        if self.source == "derived":
            return f"re-derive it (cost model, any machine) with `{command}`"
        dev = self.meta.get("device", {})
        hw = dev.get("gpu_name") or dev.get("cpu_model") or "the device it was measured on"
        return f"measure it again on {hw} with `{command}`"

    def provenance(self) -> dict[str, Any]:
        """The JSON sidecar (source, device, protocol, correction): `LatencyPredictor`'s record."""
        return dict(self.meta)

    def provenance_note(self) -> str:
        """Where the numbers come from, for the search output (`devices.provenance_note`)."""
        from .devices import provenance_note

        return provenance_note(self)

    def check_coverage(self, space: SearchSpace) -> None:
        """Raise `MissingLayerError` naming the first layer `space` can produce that has no row,
        and the command that adds it (checked before a search starts)."""
        for sig in space_layers(space, self.resolution, self.meta.get("in_chans", 3),
                                self.meta.get("num_classes", 1000)):
            if sig.key not in self._ms:
                raise MissingLayerError(
                    f"latency table {self.name!r} has no entry for layer {sig.key} of the space; "
                    f"{self.extend_hint(space.source)}")

    def describe(self) -> str:
        """One line: name, source, device, protocol, correction."""
        dev = self.meta.get("device", {})
        hw = dev.get("gpu_name") or dev.get("cpu_model") or "unknown device"
        corr = (f"correction {self.scale:.3f} x sum + {self.offset_ms:.2f} ms"
                if self.meta.get("correction") else "no correction")
        if self.meta.get("calibration"):
            corr += f" (calibrated here x{self.meta['calibration']['factor']:.2f})"
        return (f"{self.name}: {self.source} table, {hw}, {self.meta.get('target', 'cpu')}, "
                f"batch {self.batch}, {self.meta.get('threads', '?')} thread(s), "
                f"{self.resolution}x{self.resolution}, {len(self._ms)} layers, "
                f"{self.runtime_label()}, torch {dev.get('torch', '?')}, "
                f"{self.meta.get('date', '?')}, {corr}"
                + (f"; {budget_note(self.meta)}" if self.meta.get("budget") else ""))

    # ------------------------------------------------------------------ lookup
    def _lookup(self, arch: ArchConfig, resolution: int | None) -> list[tuple[str, str, float]]:
        res = self.resolution if resolution is None else resolution
        if (arch, res) in self._memo:
            return self._memo[arch, res]
        out = []
        for module, sig in arch_layers(arch, res, self.meta.get("in_chans", 3),
                                       self.meta.get("num_classes", 1000)):
            ms = self._ms.get(sig.key)
            if ms is None:
                raise MissingLayerError(
                    f"latency table {self.name!r} has no entry for layer {module} ({sig.key}) "
                    f"of {arch}; {self.extend_hint(resolution=res)}")
            out.append((module, sig.key, ms))
        if len(self._memo) < 100_000:  # bounded: a long search sees many architectures
            self._memo[arch, res] = out
        return out

    def covers(self, arch: ArchConfig, resolution: int | None = None) -> bool:
        """Whether every layer of `arch` has a row."""
        try:
            self._lookup(arch, resolution)
        except MissingLayerError:
            return False
        return True

    def store(self, key: str, value: Any, what: str) -> None:
        """Set `key` of the table's sidecar, in memory and in its JSON file (`what` names it
        in the error where the file cannot be found)."""
        sidecar = Path(self.meta.get("_path", ""))
        if not sidecar.is_file():
            raise ValueError(f"{self.name}: cannot locate the JSON sidecar to store {what}")
        meta = json.loads(sidecar.read_text())
        meta[key] = value
        sidecar.write_text(json.dumps(meta, indent=2) + "\n")
        self.meta[key] = value

    def raw_ms(self, arch: ArchConfig, resolution: int | None = None) -> float:
        """Uncorrected sum of layer latencies, ms per batch of `self.batch` images."""
        return sum(ms for _, _, ms in self._lookup(arch, resolution))

    def predict(self, arch: ArchConfig, resolution: int | None = None) -> float:
        """Predicted latency of `arch`, ms per image (corrected sum / batch).

        Raises `MissingLayerError` (naming the layer and the build command) for a layer the
        table lacks. `resolution` defaults to the table's.
        """
        return (self.scale * self.raw_ms(arch, resolution) + self.offset_ms) / self.batch

    def predict_throughput(self, arch: ArchConfig, resolution: int | None = None) -> float:
        """Predicted throughput of `arch`, images/s (meaningful for batch > 1 tables)."""
        return 1000.0 / self.predict(arch, resolution)

    def measured_share(self, arch: ArchConfig, resolution: int | None = None) -> float:
        """Share (0..1) of `arch`'s summed layer time that comes from measured rows."""
        rows = self._lookup(arch, resolution)
        return sum(ms for _, key, ms in rows if key not in self.predicted_keys) / sum(
            ms for *_, ms in rows)

    def breakdown(self, arch: ArchConfig, resolution: int | None = None) -> pd.DataFrame:
        """Per-layer rows: module name, signature key, ms per batch (uncorrected), share."""
        rows = pd.DataFrame(self._lookup(arch, resolution), columns=["module", "key", "ms"])
        rows["share"] = rows["ms"] / rows["ms"].sum()
        return rows

    def __repr__(self) -> str:
        return f"LatencyTable({self.describe()})"
