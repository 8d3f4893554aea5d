"""pconv-nas command line: `python search.py --device arm` (the search itself is issue #6).

Until the search lands, this entry point says so plainly instead of pretending to search;
the packages it will call are usable now:

    python -c "from search_space import SearchSpace; print(SearchSpace.default())"
    python benchmarks/fused_speed.py
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("error: the multi-objective search (python search.py --device ...) is not built yet "
          "(issue #6); see README.md for what works today", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
