"""Seconds per architecture of every proxy on FasterNet-T0, and the speed choices of
`ShortTrain` measured side by side in one process.

    python benchmarks/proxy_speed.py [--arch fasternet_t0] [--levels smoke,quick] [--steps 12]

1. One training step (batch 64, 32x32, AdamW) in four settings, alternated in rounds so
   that machine noise hits all alike: {1, 2} threads x {contiguous, channels_last}.
   Prints the median ms per step and the ratio to the chosen setting (1 thread,
   channels_last).
2. `ShortTrain` end to end at each budget level, without and with a callback (the
   callback adds `checkpoints - 1` evaluations), and each zero-cost proxy.
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from proxies import BUDGETS, PROXIES, ShortTrain, load_dataset  # noqa: E402
from search_space import PRESETS, build_model  # noqa: E402


def step_ms(arch, data, threads: int, channels_last: bool, steps: int, rounds: int = 3) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=data.num_classes, in_chans=data.in_chans).train()
    x = data.batch(data.train_x[:64], 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    else:
        x = x.contiguous()
    y = data.train_y[:64]
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps (oneDNN primitive creation)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="fasternet_t0", choices=list(PRESETS))
    parser.add_argument("--levels", default="smoke,quick", help="budget levels (add full: ~2 min)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting per round")
    args = parser.parse_args()
    arch, data = PRESETS[args.arch], load_dataset("fashion-mnist")
    print(f"{args.arch} on {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}")

    settings = [(1, True), (1, False), (2, True), (2, False)]
    results: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    for _ in range(3):  # rounds, alternating settings
        for threads, cl in settings:
            results[(threads, cl)].append(step_ms(arch, data, threads, cl, args.steps))
    torch.set_num_threads(1)
    base = statistics.median(results[(1, True)])
    print("\ntraining step, batch 64 at 32x32 (median of 3 rounds):")
    for (threads, cl), values in results.items():
        ms = statistics.median(values)
        print(f"  threads={threads} {'channels_last' if cl else 'contiguous   '}  {ms:7.1f} ms"
              f"  x{ms / base:.2f} vs chosen")

    print("\nShortTrain end to end (threads=1):")
    for level in args.levels.split(","):
        proxy = ShortTrain(dataset=data, budget=level, seed=0)
        plain = proxy(arch)
        with_cb = proxy(arch, callback=lambda step, acc: None)
        b = BUDGETS[level]
        print(f"  {level:6s} {b.steps:4d} steps x {b.batch_size}, {b.resolution}px, val {b.val_size}:"
              f" {plain.seconds:6.1f} s (acc {plain.accuracy:.3f}),"
              f" with callback {with_cb.seconds:6.1f} s")

    print("\nzero-cost proxies (quick budget: one batch of 64 at 32x32):")
    for name in ("synflow", "naswot", "grad_norm", "snip", "params", "flops"):
        proxy = PROXIES[name](dataset=data, budget="quick", seed=0)
        proxy(arch)  # warm-up (imports, fvcore tracing, oneDNN)
        r = proxy(arch)
        print(f"  {name:10s} {r.seconds:6.2f} s  score {r.score:.4g}")


if __name__ == "__main__":
    main()
