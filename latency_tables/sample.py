"""The order in which a budgeted build measures layer signatures: space-filling, per kind.

A budgeted build (`build_table(..., budget_s=...)`) measures signatures in this order until
its time is up, so any prefix of the order must be a good sample for the regressors of
`regress.py`: it covers every layer kind and the extremes of every feature before it fills
in the interior.

Per kind, each signature is a point in a normalized feature space (log2 of resolution and
channels, log2 of n_div, mlp_ratio, kernel, activation, stride; each scaled to [0, 1]). The
order starts with the extremes (the signatures minimizing and maximizing each feature), then
adds greedily the signature farthest from everything chosen so far (farthest-point or maximin
sampling, a classic space-filling design; ties broken by a seeded generator). The kinds'
orders are interleaved in proportion to their sizes, after a head that gives every kind the
rows its simplest regressor needs (`regress.min_rows`): a short budget still fits every kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .layers import KINDS, LayerSig
from .regress import min_rows

__all__ = ["sample_order", "required_head"]


def _points(sigs: Sequence[LayerSig]) -> np.ndarray:
    raw = np.array([[np.log2(s.res), np.log2(max(s.cin, 1)), np.log2(max(s.cout, 1)),
                     np.log2(max(s.n_div, 1)), s.mlp_ratio, s.kernel_size, s.stride,
                     float(s.act == "gelu")] for s in sigs], float)
    span = raw.max(axis=0) - raw.min(axis=0)
    keep = span > 0
    return (raw[:, keep] - raw.min(axis=0)[keep]) / span[keep]


def _kind_order(sigs: Sequence[LayerSig], rng: np.random.Generator) -> list[int]:
    """Indices of `sigs` (one kind): extremes first, then farthest-point."""
    x = _points(sigs)
    n = len(sigs)
    if n == 0:
        return []
    jitter = rng.random(n) * 1e-9  # seeded tie-breaking
    order: list[int] = []
    for j in range(x.shape[1]):
        for idx in (int(np.argmin(x[:, j] + jitter)), int(np.argmax(x[:, j] + jitter))):
            if idx not in order:
                order.append(idx)
    if not order:
        order.append(int(rng.integers(n)))
    dist = np.min([np.linalg.norm(x - x[i], axis=1) for i in order], axis=0)
    while len(order) < n:
        idx = int(np.argmax(dist + jitter))
        order.append(idx)
        dist = np.minimum(dist, np.linalg.norm(x - x[idx], axis=1))
        dist[order] = -1.0
    return order


def required_head(sigs: Sequence[LayerSig]) -> dict[str, int]:
    """Rows each kind must have measured before its regressor can be fitted (all of a kind's
    rows where it has no more than that)."""
    by_kind = {k: [s for s in sigs if s.kind == k] for k in KINDS}
    return {k: min(len(v), min_rows(k)) for k, v in by_kind.items() if v}


def sample_order(sigs: Sequence[LayerSig], seed: int = 0) -> list[LayerSig]:
    """Every signature of `sigs`, in the order a budgeted build measures them."""
    rng = np.random.default_rng(seed)
    per_kind = {k: [s for s in sigs if s.kind == k] for k in KINDS}
    queues = {k: [v[i] for i in _kind_order(v, rng)] for k, v in per_kind.items() if v}
    head = required_head(sigs)
    out = [s for k, q in queues.items() for s in q[:head[k]]]
    rest = {k: q[head[k]:] for k, q in queues.items()}
    total = sum(len(q) for q in rest.values())
    taken = dict.fromkeys(rest, 0)
    for step in range(1, total + 1):  # proportional interleaving: kind most behind its share
        k = max((k for k in rest if taken[k] < len(rest[k])),
                key=lambda k: step * len(rest[k]) / total - taken[k])
        out.append(rest[k][taken[k]])
        taken[k] += 1
    return out
