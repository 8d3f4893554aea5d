"""Choosing an architecture from a front and exporting it (YAML that builds with timm, ONNX).

Picks: `fastest`, `most-accurate`, `knee` (the front member farthest from the straight line
between the two ends of the front, both axes scaled to [0, 1]; Satopaa et al.'s "Kneedle"
idea), an `arch_id`, or the most accurate member under `max_latency_ms`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from search_space import ArchConfig

from .report import Candidate, Front

__all__ = ["PICKS", "select", "export_onnx"]

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
