"""Training steps per second of the reference protocol on one device, with P worker processes
training side by side: does running more processes (or NVIDIA MPS) make the device do more?

    python benchmarks/gpu_throughput.py --device cuda --procs 1,12 --seconds 15 [--json OUT]

Each process trains its own copy of one architecture with the real `ShortTrain` step (the
reference set's protocol: batch 256, 32 px, crop + flip, AdamW, bf16 autocast on CUDA) for
a warm-up, waits for the others, then counts the steps it finishes in `--seconds`. Prints
the aggregate steps per second for each P and its ratio to P = 1, measured in one run.

Why: on the H100 on 2026-11-26, 12 reference builds' processes side by side took 172-225 s
per 10-epoch run (2,350 steps) of architectures that are small enough to be launch-bound: if
the device runs one process's kernels at a time, more processes add nothing, and MPS (which
lets kernels of several processes run at once) or fewer, fuller processes are the fix.
`benchmarks/gpu_session.sh` runs this first and keeps MPS on only where it measured faster.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxies import ShortTrain, load_dataset  # noqa: E402
from proxies.device import device_name, resolve_device  # noqa: E402
from proxies.reference import Protocol  # noqa: E402
from proxies.short_train import _Run  # noqa: E402
from search_space import PRESETS  # noqa: E402


def _worker(arch_name: str, device: str, seconds: float, warmup: int, barrier, queue) -> None:
    import torch

    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", heldout="test").to(device)
    protocol = Protocol(lr=5e-4)
    budget = protocol.budget(len(data.train_y), len(data.val_y))
    run = _Run(ShortTrain(dataset=data, budget=budget, seed=0, device=device),
               PRESETS[arch_name])
    run.setup()
    for step in range(warmup):
        run.train_step(step)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    barrier.wait()
    start, step = time.perf_counter(), warmup
    while time.perf_counter() - start < seconds and step < budget.steps:
        run.train_step(step)  # one host sync per step (the NaN check): counts are exact
        step += 1
    queue.put((step - warmup, time.perf_counter() - start))


def measure(procs: int, arch: str, device: str, seconds: float, warmup: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(arch, device, seconds, warmup, barrier, queue))
               for _ in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    steps = sum(n for n, _ in results)
    wall = max(t for _, t in results)
    return {"procs": procs, "steps": steps, "seconds": round(wall, 2),
            "steps_per_s": round(steps / wall, 2),
            "ms_per_step_per_process": round(1000 * wall * procs / max(steps, 1), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--procs", default="1,12", help="comma-separated process counts")
    ap.add_argument("--arch", default="fasternet_t0", choices=sorted(PRESETS))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--label", default="", help="a word for this configuration (e.g. mps)")
    ap.add_argument("--json", type=Path, default=None, help="append one line per P here")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    name = device_name(dev)
    base = None
    for p in (int(x) for x in args.procs.split(",")):
        r = measure(p, args.arch, str(dev), args.seconds, args.warmup)
        base = base or r["steps_per_s"]
        r.update(device=name, arch=args.arch, label=args.label,
                 ratio_to_first=round(r["steps_per_s"] / base, 2),
                 mps=bool(os.environ.get("CUDA_MPS_PIPE_DIRECTORY")) or args.label == "mps")
        print(f"{name} {args.label or '-'} {args.arch}: {p:>2} processes {r['steps_per_s']:8.1f}"
              f" steps/s ({r['ms_per_step_per_process']:.1f} ms per step per process), "
              f"x{r['ratio_to_first']:.2f} the first", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
