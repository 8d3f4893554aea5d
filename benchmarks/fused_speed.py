"""Fused (deployment-form) FasterNet vs timm's eager FasterNet, side by side in one process.

    python benchmarks/fused_speed.py [--variants fasternet_t0,fasternet_t1,fasternet_t2]
                                     [--rounds 30] [--iters 10] [--threads 1]

Batch 1, 224x224, fp32, no grad. Both models carry the same random weights (timm's model
loads ours with strict=True; BN statistics randomized so folding is not trivial). Timing
alternates between the two in rounds of `--iters` passes so that machine noise hits both
alike; the statistic is the median per-pass time over rounds. Prints ms and the ratio
timm / ours (> 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402
import torch  # noqa: E402

from search_space import PRESETS, build_model, fuse  # noqa: E402


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def time_pair(a, b, x, rounds: int, iters: int) -> tuple[float, float]:
    """Median ms per pass of a and b, timed in alternating rounds."""
    ta, tb = [], []
    with torch.no_grad():
        for _ in range(5):
            a(x), b(x)
        for _ in range(rounds):
            for f, out in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                for _ in range(iters):
                    f(x)
                out.append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="fasternet_t0,fasternet_t1,fasternet_t2")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}, batch 1, 224x224")
    print(f"{'variant':14s} {'timm eager ms':>14s} {'ours fused ms':>14s} {'ratio':>7s} {'max|diff|':>10s}")
    x = torch.randn(1, 3, 224, 224)
    for name in args.variants.split(","):
        ours = build_model(PRESETS[name]).eval()
        randomize_bn(ours)
        ref = timm.create_model(name).eval()
        ref.load_state_dict(ours.state_dict(), strict=True)
        fused = fuse(ours)
        with torch.no_grad():
            diff = (ref(x) - fused(x)).abs().max().item()
        t_ref, t_ours = time_pair(ref, fused, x, args.rounds, args.iters)
        print(f"{name:14s} {t_ref:14.2f} {t_ours:14.2f} {t_ref / t_ours:6.2f}x {diff:10.1e}")


if __name__ == "__main__":
    main()
