"""Which timing protocol predicts whole networks: naive isolated layers vs cache context.

    python benchmarks/latency_protocols.py [--n 50] [--seed 0] [--calib-n 10] [--calib-seed 1000]

Samples the validation networks (and, disjoint from them, the calibration networks) from
the default space, builds a latency table restricted to their layers under each protocol,
side by side in one run:

- isolated: each layer timed alone, the same module on the same input (`max_copies=1`),
- context:  the `latency_tables.measure` protocol (blocks in a chain of distinct copies,
            other layers rotating over copies; copies exceed the last-level cache),

measures every network whole (same clock, statistic and rounds), and prints the accuracy of
the raw sum and of the sum corrected by a linear fit on the calibration networks only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from latency_tables import LatencyTable, Protocol, accuracy, arch_layers, build_table, fit_correction  # noqa: E402
from latency_tables._device import last_level_cache_bytes  # noqa: E402
from latency_tables.validate import measure_networks, sample_archs  # noqa: E402
from search_space import SearchSpace  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-n", type=int, default=10)
    p.add_argument("--calib-seed", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    space = SearchSpace.default()
    calib = sample_archs(space, args.calib_n, args.calib_seed)
    val = sample_archs(space, args.n, args.seed, exclude=[a.arch_id for a in calib])
    layers = {s.key: s for a in calib + val for _, s in arch_layers(a)}
    base = Protocol(context_bytes=last_level_cache_bytes())
    protocols = {"isolated": dataclasses.replace(base, max_copies=1), "context": base}
    print(f"# {len(calib)} calibration + {len(val)} validation networks (seeds {args.calib_seed}, "
          f"{args.seed}), {len(layers)} distinct layers, 1 thread, batch 1, 224x224", flush=True)
    both = measure_networks(calib + val, base, 224, args.rounds)  # same rounds: same machine state
    m_cal, m_val = both[:len(calib)], both[len(calib):]
    with tempfile.TemporaryDirectory() as tmp:
        for name, proto in protocols.items():
            path = build_table(name, space, proto=proto, out_dir=tmp, layers=list(layers.values()))
            table = LatencyTable.load(path)
            scale, offset = fit_correction(m_cal, [table.raw_ms(a) for a in calib])
            raw = [table.raw_ms(a) for a in val]
            print(f"{name:9s} raw       : {accuracy(m_val, raw)}")
            print(f"{name:9s} corrected : {accuracy(m_val, [scale * r + offset for r in raw])}  "
                  f"(ms = {scale:.3f} x sum + {offset:.2f})", flush=True)


if __name__ == "__main__":
    main()
