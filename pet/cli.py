"""The `pet` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks.cli import add_arguments, run
from pet.demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pet` and `python -m pet`."""
    parser = argparse.ArgumentParser(prog="pet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo study on lung cancer sites")
    demo.add_argument("--sites", type=int, default=3, help="number of sites (1-18)")
    bench = commands.add_parser("bench", help="run a benchmark profile (quick, full, ...)")
    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run(args)
    print(run_demo(args.sites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
