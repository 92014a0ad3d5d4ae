"""Command line of the harness: `python -m benchmarks` and `pet bench`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.profiles import PROFILES_DIR

RUNS_DIR = Path("benchmarks/runs")
DATA_DIR = Path("benchmarks/.data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark run."""
    shipped = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
    parser.add_argument("profile", help=f"a shipped profile ({shipped}) or a profile file")
    parser.add_argument("--out", type=Path,
                        help="run folder; an existing one is resumed (default: a new folder "
                             f"under {RUNS_DIR}/)")
    parser.add_argument("--data", type=Path, default=DATA_DIR,
                        help=f"where generated cohort data is cached (default: {DATA_DIR})")
    parser.add_argument("--backends", nargs="+", default=(), metavar="NAME",
                        help="run only these backends of the profile")
    parser.add_argument("--workloads", nargs="+", default=(), metavar="NAME",
                        help="run only these workloads of the profile")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the profile and say where the results are."""
    # Imported here: profiles and the harness pull in pet's backends, matplotlib and tqdm,
    # which only a run needs.
    from benchmarks.harness import run_profile
    from benchmarks.profile import Profile

    profile = Profile.load(args.profile).only(backends=args.backends,
                                              workloads=args.workloads)
    out = args.out or RUNS_DIR / f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    frame = run_profile(profile, out, data_dir=args.data, progress=not args.no_progress)
    failed = int((frame["status"] != "ok").sum())
    print(f"{len(frame)} cells ({failed} failed) in {out}: results.csv, run.json, "
          "summary.md and plots")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m benchmarks`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Run a benchmark profile.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
