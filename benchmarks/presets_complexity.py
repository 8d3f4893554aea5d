"""Params and fvcore FLOPs of every preset at 224x224 next to the paper's figures.

    python benchmarks/presets_complexity.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_space import PRESETS, params_and_flops  # noqa: E402

# FasterNet paper, Table 5 / timm model cards: (params M, FLOPs G) at 224x224.
PUBLISHED = {"fasternet_t0": (3.9, 0.34), "fasternet_t1": (7.6, 0.85), "fasternet_t2": (15.0, 1.90),
             "fasternet_s": (31.1, 4.55), "fasternet_m": (53.5, 8.72), "fasternet_l": (93.4, 15.49)}


def main() -> None:
    print("| preset | params M (ours / paper) | FLOPs G (ours / paper) | worst deviation |")
    print("| --- | --- | --- | --- |")
    for name, arch in PRESETS.items():
        c = params_and_flops(arch, 224)
        p_pub, f_pub = PUBLISHED[name]
        dev = max(abs(c.params_m / p_pub - 1), abs(c.flops_g / f_pub - 1))
        print(f"| {name} | {c.params_m:.2f} / {p_pub} | {c.flops_g:.3f} / {f_pub} | {dev:.2%} |")


if __name__ == "__main__":
    main()
