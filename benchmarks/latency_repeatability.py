"""Repeatability of latency tables: two builds of the same table on the same machine.

    python benchmarks/latency_repeatability.py TABLE_A TABLE_B   # names or CSV paths
    python benchmarks/latency_repeatability.py TABLE_A --rebuild  # re-measure A's preset rows

`--rebuild` re-measures, with TABLE_A's protocol, the layers of the presets it covers (a
second build of those rows, into a temporary folder) and compares. Prints, for each preset
both tables cover, the raw (uncorrected) sum of layer latencies in
each build and their difference, plus the median and 90th percentile of the per-layer
differences over the rows both tables share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latency_tables import LatencyTable, Protocol, arch_layers, build_table  # noqa: E402
from search_space import PRESETS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b", nargs="?")
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args()
    a = LatencyTable.load(args.a)
    if args.rebuild:
        layers = {s.key: s for arch in PRESETS.values() if a.covers(arch)
                  for _, s in arch_layers(arch, a.resolution)}
        tmp = tempfile.mkdtemp()
        path = build_table("rebuild", None, resolution=a.resolution, out_dir=tmp,
                           proto=Protocol.from_dict(a.meta["protocol"]),
                           sweeps=a.meta["protocol"].get("sweeps", 2), layers=list(layers.values()))
        b = LatencyTable.load(path)
    else:
        b = LatencyTable.load(args.b)
    print(f"A: {a.describe()}\nB: {b.describe()}")
    print(f"{'preset':14s} {'A sum ms':>9s} {'B sum ms':>9s} {'B/A-1':>7s}")
    for name, arch in PRESETS.items():
        if a.covers(arch) and b.covers(arch):
            ra, rb = a.raw_ms(arch), b.raw_ms(arch)
            print(f"{name:14s} {ra:9.2f} {rb:9.2f} {rb / ra - 1:+7.1%}")
    m = a.rows.merge(b.rows, on="key", suffixes=("_a", "_b"))
    d = (m["ms_b"] / m["ms_a"] - 1).abs() * 100
    print(f"per-layer |B/A-1| over {len(m)} rows: median {d.median():.1f} %, "
          f"p90 {d.quantile(0.9):.1f} %, max {d.max():.1f} %")


if __name__ == "__main__":
    main()
