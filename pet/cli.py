"""The `pet` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks.cli import add_arguments, run
from pet.demo import run_demo
from pet.ledger import BudgetError, Ledger
from pet.report import table


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pet` and `python -m pet`."""
    parser = argparse.ArgumentParser(prog="pet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo study on lung cancer sites")
    demo.add_argument("--sites", type=int, default=3, help="number of sites (1-18)")
    bench = commands.add_parser("bench", help="run a benchmark profile (quick, full, ...)")
    add_arguments(bench)
    budget = commands.add_parser("budget", help="show or set a site's privacy budgets")
    budget.add_argument("ledger", help="the site's ledger file (SQLite)")
    budget.add_argument("dataset", nargs="?", help="a dataset (default: show all)")
    budget.add_argument("--set", nargs=2, type=float, metavar=("EPSILON", "DELTA"),
                        help="configure the dataset's total budget")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run(args)
    if args.command == "budget":
        return _budget(args, parser)
    print(run_demo(args.sites))
    return 0


def _budget(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Show budgets (one dataset's, or all) or configure one; errors go to stderr."""
    if args.set and not args.dataset:
        parser.error("--set needs a dataset")
    ledger = Ledger(args.ledger)
    try:
        if args.set:
            budgets = [ledger.set_budget(args.dataset, *args.set)]
        else:
            budgets = [ledger.budget(args.dataset)] if args.dataset else ledger.budgets()
    except BudgetError as error:
        print(f"pet budget: {error}", file=sys.stderr)
        return 1
    rows = [[b.dataset, f"{b.epsilon:g}", f"{b.spent_epsilon:g}", f"{b.remaining_epsilon:g}",
             f"{b.delta:g}", f"{b.spent_delta:g}", str(b.releases)] for b in budgets]
    print(table(rows, ["dataset", "ε", "ε spent", "ε left", "δ", "δ spent", "releases"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
