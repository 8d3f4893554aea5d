"""Choosing an architecture from a front and exporting it (YAML that builds with timm, ONNX,
a runtime's own file).

Picks: `fastest`, `most-accurate`, `knee` (the front member farthest from the straight line
between the two ends of the front, both axes scaled to [0, 1]; Satopaa et al.'s "Kneedle"
idea), an `arch_id`, or the most accurate member under `max_latency_ms`.

`export_runtime` writes an architecture for a deployment runtime (`latency_tables.runtimes`:
an ExecuTorch `.pte` with the XNNPACK delegate, an ONNX file for ONNX Runtime) in that
runtime's deployment form (`search_space.forms`; the form a latency table of the runtime
recorded, `export_form`), loads the written file back, compares its logits with the training
form in eager PyTorch and times it here with the tables' protocol.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search_space import ArchConfig

from .report import Candidate, Front

if TYPE_CHECKING:
    from latency_tables import LatencyTable

__all__ = ["PICKS", "select", "export_onnx", "export_form", "export_runtime", "RuntimeExport",
           "ExportCheckFailed"]

PICKS = ("knee", "fastest", "most-accurate")


def select(front: Front, *, pick: str | None = None, max_latency_ms: float | None = None) -> Candidate:
    """One front member by rule; a clear ValueError when nothing qualifies."""
    members: Sequence[Candidate] = front.members
    if not members:
        raise ValueError(f"the front on {front.device} is empty: no trial completed yet")
    lat = np.array([c.latency_ms[front.device] for c in members])
    acc = np.array([c.accuracy for c in members])
    if max_latency_ms is not None:
        ok = [c for c, ms in zip(members, lat) if ms <= max_latency_ms]
        if not ok:
            raise ValueError(f"no front member on {front.device} is within {max_latency_ms} ms "
                             f"(fastest: {lat.min():.2f} ms)")
        return max(ok, key=lambda c: c.accuracy)
    if pick == "fastest":
        return members[int(lat.argmin())]
    if pick == "most-accurate":
        return members[int(acc.argmax())]
    if pick == "knee":
        if len(members) < 3:
            return members[int(acc.argmax())] if len(members) == 1 else members[-1]
        x = (lat - lat.min()) / max(np.ptp(lat), 1e-12)
        y = (acc - acc.min()) / max(np.ptp(acc), 1e-12)
        # distance above the chord from the fastest to the most accurate end
        order = np.argsort(x)
        x0, y0, x1, y1 = x[order[0]], y[order[0]], x[order[-1]], y[order[-1]]
        dist = ((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / np.hypot(x1 - x0, y1 - y0)
        return members[int(dist.argmax())]
    for c in members:
        if c.arch_id == pick:
            return c
    raise ValueError(f"--pick {pick!r}: not one of {', '.join(PICKS)} nor the arch_id of a "
                     f"front member on {front.device} ({', '.join(c.arch_id for c in members)})")


def export_onnx(arch: ArchConfig, path: Path, *, num_classes: int = 1000, in_chans: int = 3,
                resolution: int = 224, seed: int = 0) -> float:
    """Export the deployment form of `arch` (random weights) to ONNX and check it with
    onnxruntime against PyTorch; returns the max abs difference of the logits."""
    import onnxruntime as ort
    import torch

    from search_space import build_model, fuse

    torch.manual_seed(seed)
    model = fuse(build_model(arch, num_classes=num_classes, in_chans=in_chans).eval())
    x = torch.randn(1, in_chans, resolution, resolution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on in-place GEMMs
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(out - ref).max())
    if not diff <= 1e-3:
        raise RuntimeError(f"ONNX check failed: onnxruntime differs from PyTorch by {diff:.2e}")
    return diff


class ExportCheckFailed(ValueError):
    """The written file's logits differ from eager PyTorch's by more than the tolerance."""


@dataclasses.dataclass(frozen=True)
class RuntimeExport:
    """What `export_runtime` wrote and measured: latency in ms per image at batch 1."""

    path: Path
    runtime: str
    runtime_label: str
    form: str
    max_abs_diff: float
    tolerance: float
    ms: float
    threads: int
    resolution: int
    machine: str
    export_s: float

    def latency_line(self) -> str:
        """"12.3 ms per image measured here (AMD EPYC, executorch 1.5.1 XNNPACK, ...)"."""
        return (f"{self.ms:.2f} ms per image measured here ({self.machine}, {self.runtime_label}, "
                f"{self.threads} thread{'s' * (self.threads != 1)}, batch 1, "
                f"{self.resolution}x{self.resolution}, {self.form} form)")


def export_form(runtime: str, table: str | None = None) -> tuple[str, str, LatencyTable | None]:
    """(form, where it comes from, the table it comes from): the form `table` records (it must
    be of `runtime`: `RuntimeMismatch` otherwise), else that of the first table of `runtime`
    measured on this machine, else the runtime's default form."""
    from latency_tables import LatencyTable, available
    from latency_tables._device import cpu_model
    from latency_tables.runtimes import get_runtime

    rt = get_runtime(runtime)
    if table is not None:
        t = LatencyTable.load(table)
        t.check_runtime(runtime)
        return t.form, f"the form table {t.name!r} records", t
    for name in available():
        t = LatencyTable.load(name)
        if t.runtime == runtime and t.meta.get("device", {}).get("cpu_model") == cpu_model():
            return t.form, f"the form table {t.name!r} records", t
    return rt.default_form, (f"{runtime}'s default: no table of {runtime} measured here records a "
                             f"choice (`python -m latency_tables build --runtime {runtime}`)"), None


def export_runtime(arch: ArchConfig, path: Path, *, runtime: str, form: str, threads: int = 1,
                   num_classes: int = 1000, in_chans: int = 3, resolution: int = 224,
                   checkpoint: str | Path | None = None, seed: int = 0) -> RuntimeExport:
    """Write `arch` (random weights of `deploy.check_weights`, or `checkpoint`'s) in `form` as
    `runtime`'s file `path`.

    The file must lower fully (`NotFullyLowered` names the ops outside the delegate), its
    logits, loaded back from `path`, must match the training form in eager PyTorch within
    `latency_tables.deploy.logits_tolerance` (`ExportCheckFailed`, the file removed), and its
    latency is measured here: 3 warm-ups, >= 20 passes and >= 1 s, twice, the lower median.
    """
    import torch

    from latency_tables import Protocol
    from latency_tables._device import cpu_model
    from latency_tables.deploy import check_weights, logits_tolerance
    from latency_tables.measure import time_compiled
    from latency_tables.runtimes import get_runtime
    from search_space import build_model
    from search_space.forms import to_form

    rt = get_runtime(runtime)
    rt.require()
    if rt.suffix is None:
        raise ValueError(f"--runtime {runtime}: nothing to write (the architecture file builds it)")
    if path.suffix != rt.suffix:
        raise ValueError(f"--out {path}: a {runtime} file ends in {rt.suffix}")
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, in_chans=in_chans).eval()
    if checkpoint is not None:
        from timm.models import load_checkpoint

        load_checkpoint(model, str(checkpoint), strict=True)
    else:  # random weights whose logits are of order 1, so the check below means something
        check_weights(model, seed)
    x = torch.randn(1, in_chans, resolution, resolution)
    with torch.inference_mode():
        ref = model(x)
    compiled = rt.compile(to_form(model, form), (x,), threads,
                          what=f"{arch.arch_id} in the {form} form")
    path.write_bytes(compiled.artifact or b"")
    loaded = rt.load(path, threads)
    diff = float((loaded(x) - ref).abs().max())
    tol = logits_tolerance(ref)
    if not diff <= tol:
        path.unlink()
        raise ExportCheckFailed(f"{runtime}: {path} differs from PyTorch by {diff:.2e} (tolerance "
                                f"{tol:.1e}); removed it")
    proto = Protocol(threads=threads, runtime=runtime, form=form, min_repeats=20, min_time_s=1.0)
    ms = min(time_compiled(loaded, (x,), proto).median_ms for _ in range(2))
    return RuntimeExport(path, runtime, rt.describe(), form, diff, tol, ms, threads, resolution,
                         cpu_model(), compiled.export_s)
