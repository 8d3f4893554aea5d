"""GELU vs ReLU element throughput in eager PyTorch, fused form, one thread, side by side.

Issue 15, requirement 2: the evidence for `cost_model.ACTIVATION_COSTS`. The fused network
(`search_space.fuse`) runs its activation as one standalone ATen kernel on the hidden
tensor of each block (`F.gelu(h)`, out of place, exact erf form; `torch.relu_(h)`, in
place). This script times exactly those two calls on the hidden tensors of FasterNet-T0 and
-T2 at batch 1 (2 x width channels at each stage's resolution) and prints the ratio of their
times, GELU / ReLU, per tensor. SiLU (MobileViT's activation) is timed alongside for
reference.

Each kernel set runs in a child process of its own (`ATEN_CPU_CAPABILITY`, oneDNN on/off):
`avx512+onednn` is what this torch runs as shipped (fp32 GELU goes to oneDNN's JIT kernel);
`avx512` is ATen's own vectorized kernel (a polynomial erf in SIMD registers, oneDNN off);
`default` is ATen's portable kernel with oneDNN off: a scalar `std::erf` per element, the
case of a CPU whose PyTorch build has no vectorized erf. Inside a child, the activations
alternate in rounds (the order flips every round) so that the load of the other jobs on
this shared machine hits all of them alike;
each timing is the thread's CPU time (`time.thread_time`) of `--iters` calls, the statistic
is the median over rounds of the per-round ratio, the spread its interquartile range.

    .venv/bin/python benchmarks/activation_cost.py [--rounds 15] [--iters 20]

Writes `benchmarks/reports/activation_cost.{md,json}` (the JSON is what
`latency_tables.cost_model.ACTIVATION_COSTS` quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPORTS = Path(__file__).resolve().parent / "reports"
#: Hidden tensors of the fused blocks, (channels, side): 2 x stage width (mlp_ratio 2) at
#: 56/28/14/7 for FasterNet-T0 (embed 40) and -T2 (embed 96).
SHAPES = {"T0": [(80, 56), (160, 28), (320, 14), (640, 7)],
          "T2": [(192, 56), (384, 28), (768, 14), (1536, 7)]}
#: Kernel sets: name -> (ATEN_CPU_CAPABILITY, oneDNN enabled).
KERNEL_SETS = {"avx512+onednn": ("avx512", True), "avx512": ("avx512", False),
               "default": ("default", False)}


def _ops() -> dict[str, object]:
    return {"relu_": torch.relu_, "gelu": F.gelu, "silu": F.silu}


def child(rounds: int, iters: int, onednn: bool) -> dict[str, object]:
    """Time the activations in this process; per tensor the per-round times (ns/element)."""
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = onednn
    torch.manual_seed(0)
    ops = _ops()
    out: dict[str, object] = {"capability": torch.backends.cpu.get_cpu_capability(),
                              "torch": torch.__version__, "tensors": {}}
    for net, shapes in SHAPES.items():
        for c, s in shapes:
            x = torch.randn(1, c, s, s)
            n = x.numel()
            for f in ops.values():  # warm-up: allocator, code paths
                for _ in range(3):
                    f(x.clone())
            times: dict[str, list[float]] = {k: [] for k in ops}
            for r in range(rounds):
                order = list(ops) if r % 2 == 0 else list(reversed(ops))
                for k in order:
                    f = ops[k]
                    xs = [x.clone() for _ in range(iters)]  # fresh buffers, as in the network
                    t0 = time.thread_time()
                    for xi in xs:
                        f(xi)
                    times[k].append((time.thread_time() - t0) / iters / n * 1e9)
            out["tensors"][f"{net}:{c}x{s}x{s}"] = {"elements": n, "ns_per_element": times}
    return out


def _summary(rows: list[float]) -> dict[str, float]:
    q = statistics.quantiles(rows, n=4)
    return {"median": statistics.median(rows), "q1": q[0], "q3": q[2],
            "min": min(rows), "max": max(rows)}


def summarize(res: dict[str, object]) -> dict[str, object]:
    """Per tensor: median ns/element of each activation and the GELU/ReLU, SiLU/ReLU ratios."""
    tensors = {}
    for name, t in res["tensors"].items():  # type: ignore[union-attr]
        ns = t["ns_per_element"]
        gelu = [g / r for g, r in zip(ns["gelu"], ns["relu_"])]
        silu = [g / r for g, r in zip(ns["silu"], ns["relu_"])]
        tensors[name] = {"elements": t["elements"],
                         "relu_ns": statistics.median(ns["relu_"]),
                         "gelu_ns": statistics.median(ns["gelu"]),
                         "silu_ns": statistics.median(ns["silu"]),
                         "gelu_over_relu": _summary(gelu), "silu_over_relu": _summary(silu)}
    per_tensor = [v["gelu_over_relu"]["median"] for v in tensors.values()]
    return {"capability": res["capability"], "torch": res["torch"], "tensors": tensors,
            "gelu_over_relu_median": statistics.median(per_tensor),
            "gelu_over_relu_range": [min(per_tensor), max(per_tensor)],
            "silu_over_relu_median": statistics.median(
                v["silu_over_relu"]["median"] for v in tensors.values())}


def cpu_name() -> str:
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    return (f"{fields.get('model name', platform.processor())} (family {fields.get('cpu family')}, "
            f"model {fields.get('model')}, stepping {fields.get('stepping')})")


def render(results: list[dict[str, object]], meta: dict[str, object]) -> str:
    lines = ["# GELU vs ReLU element throughput (eager PyTorch, fused form, one thread)", "",
             f"CPU: {meta['cpu']}; torch {meta['torch']}; {meta['rounds']} alternating rounds x "
             f"{meta['iters']} calls per tensor and activation; thread CPU time; the machine was "
             "shared with another job (2 cores). Generated by `benchmarks/activation_cost.py`.", "",
             "`F.gelu(h)` (exact erf, out of place) and `torch.relu_(h)` (in place) on the hidden "
             "tensor of each fused block of FasterNet-T0 / -T2 at batch 1. Ratio = GELU time / "
             "ReLU time, median over rounds [interquartile range].", "",
             "| ATen kernel | tensor | ReLU ns/elem | GELU ns/elem | SiLU ns/elem | GELU / ReLU | "
             "SiLU / ReLU |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for name, t in r["tensors"].items():  # type: ignore[union-attr]
            g, s = t["gelu_over_relu"], t["silu_over_relu"]
            lines.append(f"| {r['capability']} | {name} | {t['relu_ns']:.3f} | {t['gelu_ns']:.3f} | "
                         f"{t['silu_ns']:.3f} | {g['median']:.2f} [{g['q1']:.2f}, {g['q3']:.2f}] | "
                         f"{s['median']:.2f} |")
    lines += ["", "| ATen kernel | GELU / ReLU (median over tensors) | range over tensors | "
              "SiLU / ReLU |", "| --- | --- | --- | --- |"]
    for r in results:
        lo, hi = r["gelu_over_relu_range"]  # type: ignore[misc]
        lines.append(f"| {r['capability']} | {r['gelu_over_relu_median']:.2f} | {lo:.2f} - {hi:.2f} "
                     f"| {r['silu_over_relu_median']:.2f} |")
    lines += ["", "Published figures: none found. The FasterNet paper reports no per-operator "
              "activation timings, and no network access was available here to look further.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--onednn", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        json.dump(child(args.rounds, args.iters, bool(args.onednn)), sys.stdout)
        return
    results = []
    for name, (cap, onednn) in KERNEL_SETS.items():
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds),
                              "--iters", str(args.iters), "--onednn", str(int(onednn))],
                             env=env, check=True, capture_output=True, text=True).stdout
        res = summarize(json.loads(out))
        if res["capability"].lower() != cap:  # the CPU lacks it: the child fell back
            continue
        res["capability"] = name
        results.append(res)
        print(f"{name}: GELU/ReLU {res['gelu_over_relu_median']:.2f} "
              f"(range {res['gelu_over_relu_range'][0]:.2f}-{res['gelu_over_relu_range'][1]:.2f})",
              flush=True)
    meta = {"cpu": cpu_name(), "torch": torch.__version__, "rounds": args.rounds,
            "iters": args.iters, "date": time.strftime("%Y-%m-%d"),
            "command": "benchmarks/activation_cost.py " + " ".join(sys.argv[1:])}
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "activation_cost.json").write_text(json.dumps({**meta, "results": results},
                                                             indent=2) + "\n")
    (REPORTS / "activation_cost.md").write_text(render(results, meta))
    print(render(results, meta))


if __name__ == "__main__":
    main()
