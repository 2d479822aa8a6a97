"""Redraw a benchmark's benchmark.md and benchmark.png from its saved benchmark.json; trains nothing.

    python scripts/plot_benchmark.py results/benchmark/<timestamp>

The same as `python scripts/benchmark.py --plot-only --out results/benchmark/<timestamp>`.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odegpt_eval import benchmark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the benchmark folder (holds benchmark.json)")
    a = p.parse_args(argv)
    return benchmark.main(["--plot-only", "--out", str(a.out)])


if __name__ == "__main__":
    sys.exit(main())
