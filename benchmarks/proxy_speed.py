"""Seconds per architecture of every proxy on FasterNet-T0, and the speed choices of
`ShortTrain` measured side by side in one process.

    python benchmarks/proxy_speed.py [--arch fasternet_t0] [--levels smoke,quick] [--steps 12]
    python benchmarks/proxy_speed.py --device cuda [--concurrency 1,4,8] [--candidates 48]

1. One training step (batch 64, 32x32, AdamW) in four settings, alternated in rounds so
   that machine noise hits all alike: {1, 2} threads x {contiguous, channels_last}.
   Prints the median ms per step and the ratio to the chosen setting (1 thread,
   channels_last).
2. `ShortTrain` end to end at each budget level, without and with a callback (the
   callback adds `checkpoints - 1` evaluations), and each zero-cost proxy.

With ``--device cuda`` (an accelerator) it measures instead, in one run:
3. seconds per quick-budget candidate for T0/T1/T2 on the device, and for T0 on one core of
   the same machine's CPU in the same run (the ratio is the speed-up per candidate);
4. candidates per minute with 1, 4 and 8 candidates trained concurrently on the one
   device (worker processes, one thread each; each builds its proxy and trains one
   warm-up candidate before the clock starts), over the same architectures sampled from
   the default space. Results also go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from proxies import BUDGETS, PROXIES, ShortTrain, load_dataset  # noqa: E402
from proxies.device import device_name, resolve_device  # noqa: E402
from search_space import PRESETS, SearchSpace, build_model  # noqa: E402


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


def _concurrent_worker(archs: list[dict], device: str, level: str, start_at: float) -> tuple:
    """One worker process: build the proxy, train one warm-up candidate, wait for the
    common start, then train `archs`; returns (candidates, end time, failures)."""
    from search_space import ArchConfig

    proxy = ShortTrain(dataset="fashion-mnist", budget=level, seed=0, device=device)
    proxy(ArchConfig.from_dict(archs[0]))  # warm-up: CUDA context, cuDNN, allocator
    time.sleep(max(0.0, start_at - time.time()))
    failed = sum(proxy(ArchConfig.from_dict(a)).failed for a in archs[1:])
    return len(archs) - 1, time.time(), failed


def accelerator(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    data = load_dataset("fashion-mnist")
    name = device_name(device)
    print(f"{name} vs one core of {platform.processor() or platform.machine()} "
          f"({os.cpu_count()} cpus), torch {torch.__version__}, budget {args.level}")
    out: dict = {"device": name, "cpus": os.cpu_count(), "torch": torch.__version__,
                 "level": args.level, "per_candidate": {}, "concurrent": {}}
    print(f"\nseconds per {args.level} candidate (device: second of two runs; CPU, T0 only: "
          "one run, as the search runs it):")
    for preset in ("fasternet_t0", "fasternet_t1", "fasternet_t2"):
        proxy = ShortTrain(dataset=data, budget=args.level, seed=0, device=device, threads=1)
        proxy(PRESETS[preset])  # warm-up: CUDA context, cuDNN heuristics, allocator
        r = proxy(PRESETS[preset])
        row = {"seconds": r.seconds, "accuracy": r.accuracy, "precision": r.precision}
        line = f"  {preset}: {r.seconds:6.2f} s on {device} ({r.precision})"
        if preset == "fasternet_t0":
            cpu = ShortTrain(dataset=data, budget=args.level, seed=0, device="cpu", threads=1)
            c = cpu(PRESETS[preset])
            row.update(cpu_seconds=c.seconds, cpu_accuracy=c.accuracy, speedup=c.seconds / r.seconds)
            line += f", {c.seconds:6.1f} s on one CPU core: x{c.seconds / r.seconds:.1f}"
        out["per_candidate"][preset] = row
        print(line)
    rng = np.random.default_rng(0)
    space = SearchSpace.default()
    archs = [space.sample(rng).to_dict() for _ in range(args.candidates)]
    context = multiprocessing.get_context("spawn")
    print(f"\n{args.candidates} architectures sampled from the default space (seed 0), "
          f"{args.level} budget, N concurrent worker processes on {device}:")
    for n in (int(c) for c in args.concurrency.split(",")):
        shares = [[archs[i % len(archs)]] + archs[i::n] for i in range(n)]
        start_at = time.time() + args.warmup_s
        with ProcessPoolExecutor(max_workers=n, mp_context=context) as pool:
            parts = list(pool.map(_concurrent_worker, shares, [str(device)] * n,
                                  [args.level] * n, [start_at] * n))
        done = sum(p[0] for p in parts)
        wall = max(p[1] for p in parts) - start_at
        per_min = done / wall * 60
        out["concurrent"][n] = {"candidates": done, "seconds": wall, "per_minute": per_min,
                                "failed": sum(p[2] for p in parts)}
        print(f"  N={n}: {done} candidates in {wall:.1f} s = {per_min:.0f} per minute "
              f"({out['concurrent'][n]['failed']} failed)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="fasternet_t0", choices=list(PRESETS))
    parser.add_argument("--levels", default="smoke,quick", help="budget levels (add full: ~2 min)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting per round")
    parser.add_argument("--device", default=None,
                        help="cuda / cuda:N (or cpu, to try the accelerator mode): sections 3-4")
    parser.add_argument("--level", default="quick", help="budget of sections 3-4")
    parser.add_argument("--concurrency", default="1,4,8", help="concurrent candidates (3-4)")
    parser.add_argument("--candidates", type=int, default=24, help="architectures timed (4)")
    parser.add_argument("--warmup-s", type=float, default=20.0,
                        help="seconds the workers get to start before the clock (4)")
    parser.add_argument("--json", default=None, help="also write the results here (3-4)")
    args = parser.parse_args()
    if args.device is not None:
        accelerator(args)
        return
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
