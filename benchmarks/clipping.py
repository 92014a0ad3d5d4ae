"""What clipping bounds buy under DP: the error of a variance, a correlation and a
regression coefficient against plaintext's answer on the same rows (with the schema's
bounds), at ε = 1: with the schema's bounds, with public bounds an analyst would take
from the literature, and with bounds estimated by a DP quantile release that takes a
tenth of the query's ρ (`pet.clipping.private_bounds`).

    python -m benchmarks.clipping --out benchmarks/results/clipping
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from pet.backends.central_dp import HEDP
from pet.clipping import private_bounds, split_budget
from pet.disclosure import DisclosurePolicy
from pet.queries import Correlation, LinearRegression, Query, Variance
from pet.result import answer_vector
from pet.study import Study
from pet.workloads import Workload, cohort, lung

EPSILON, DELTA, SHARE, DRAWS = 1.0, 1e-6, 0.1, 30
OPEN = DisclosurePolicy(min_cell=1, max_parameter_ratio=1.0)
CASES: dict[str, tuple[Callable[[], Workload], dict[str, Query], dict]] = {
    "lung (3 × 76 rows)": (lambda: lung(3), {
        "variance": Variance("wt_loss"),
        "correlation": Correlation(("age", "ph_karno", "wt_loss")),
        "linear": LinearRegression("wt_loss", ("age", "ph_karno")),
    }, {"age": (40, 80), "ph_karno": (50, 100), "wt_loss": (-10, 40)}),
    "cohort (3 × 10⁴ rows)": (lambda: cohort(10_000, 3, 5), {
        "variance": Variance("bmi"),
        "correlation": Correlation(("age", "bmi", "hdl")),
        "linear": LinearRegression("sbp", ("age", "bmi")),
    }, {"age": (40, 80), "bmi": (18, 45), "hdl": (0.7, 2.5), "sbp": (90, 200)}),
}
"""Workload, queries and public clipping bounds; the number compared is the variance,
the first off-diagonal correlation, the first slope."""
PICK = {"variance": 0, "correlation": 1, "linear": 1}


def error(value: object, exact: object, pick: int) -> float:
    """Absolute error of the compared number (NaN answers count as missing)."""
    ours, truth = answer_vector(value), answer_vector(exact)
    return float(abs(ours[pick] - truth[pick]))


def measure(workload: Workload, query: Query, pick: int, public: dict,
            folder: Path) -> dict[str, float]:
    """Median absolute error over DRAWS with the schema's bounds, public clipping bounds
    and private ones, and how often each answered with a finite number."""
    sites = workload.sites(OPEN, ledgers=folder)
    for site in sites:
        site.ledger.set_budget(site.dataset, 1e4, 1e-3)
    exact = Study(workload.sites(OPEN)).run(query).value
    first, rest = split_budget(EPSILON, DELTA, SHARE)
    plain, fixed, clipped = [], [], []
    given = replace(query, clip={c: b for c, b in public.items() if c in query.inputs()})
    with Study(sites, backend=HEDP(epsilon=EPSILON, delta=DELTA)) as full, \
            Study(sites, backend=HEDP(epsilon=first, delta=DELTA)) as bounds, \
            Study(sites, backend=HEDP(epsilon=rest, delta=DELTA)) as main:
        for _ in range(DRAWS):
            plain.append(error(full.run(query).value, exact, pick))
            fixed.append(error(full.run(given).value, exact, pick))
            clip = {}
            for column in query.inputs():
                if workload.schema[column].kind in ("continuous", "integer"):
                    clip.update(private_bounds(bounds, column))
            narrowed = replace(query, clip=clip)
            clipped.append(error(main.run(narrowed).value, exact, pick))
    return {"schema_bounds": float(np.nanmedian(plain)),
            "public_clip": float(np.nanmedian(fixed)),
            "private_clip": float(np.nanmedian(clipped)),
            "answered": " / ".join(f"{np.mean(np.isfinite(e)):.0%}"
                                   for e in (plain, fixed, clipped))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/clipping"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (make, queries, public) in CASES.items():
            workload = make()
            for label, query in queries.items():
                result = measure(workload, query, PICK[label], public,
                                 Path(folder) / f"{name[:4]}-{label}")
                rows.append({"workload": name, "query": label, **result})
                print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| workload | query | error, schema bounds | error, public clip | error, "
             "private clip (ρ/10 on bounds) | answered (schema / public / private) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['workload']} | {r['query']} | {r['schema_bounds']:.3g} | "
              f"{r['public_clip']:.3g} | {r['private_clip']:.3g} | {r['answered']} |"
              for r in rows]
    lines.append(f"\nhe+dp, 3 sites, ε = {EPSILON} in all, δ = {DELTA:g}, median absolute "
                 f"error over {DRAWS} draws against plaintext with the schema's bounds; "
                 f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
                 f"on {os.cpu_count()} cores.")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
