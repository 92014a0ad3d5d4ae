"""Fit noisy marginals with Private-PGM's estimator (mbi 2.0 `MirrorDescent`) and write
the fitted model's marginals of the measured cliques; run by the mbi peer's interpreter.

    estimate_mbi.py IN.json OUT.json [ITERATIONS]

IN.json: {"attributes": [...], "sizes": [...], "total": N, "measurements":
[{"clique": [...], "values": [...], "sd": [...]}, ...]}, values flat in C order, one
noise sd per cell. A cell's measurement is weighted by its own sd (mbi's loss divides
by one σ per measurement, so each is rescaled to its smallest sd with a weighted query).
The total is given, so both estimators fit the same objective. OUT.json: {"marginals":
[[...], ...], "fit_s": seconds}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from mbi import DatavectorQuery, Domain, LinearMeasurement, WeightedQuery  # noqa: E402
from mbi.estimation import MirrorDescent  # noqa: E402


def measurement(clique: list[str], values: np.ndarray, sd: np.ndarray) -> LinearMeasurement:
    """One noisy marginal as mbi's measurement, cells of larger sd down-weighted."""
    least = float(sd.min())
    if np.allclose(sd, least, rtol=1e-12, atol=0):
        return LinearMeasurement(values, tuple(clique), least, query=DatavectorQuery())
    weight = least / sd
    return LinearMeasurement(values * weight, tuple(clique), least, query=WeightedQuery(weight))


def main(argv: list[str]) -> int:
    source, target = argv[1], argv[2]
    iterations = int(argv[3]) if len(argv) > 3 else 10_000
    given = json.loads(Path(source).read_text())
    domain = Domain(given["attributes"], given["sizes"])
    measured = [measurement(m["clique"], np.asarray(m["values"]), np.asarray(m["sd"]))
                for m in given["measurements"]]
    start = time.perf_counter()
    model = MirrorDescent().estimate(domain, measured, known_total=float(given["total"]),
                                     iters=iterations)
    fit_s = time.perf_counter() - start
    marginals = [np.ravel(np.asarray(model.project(tuple(m["clique"])).datavector())).tolist()
                 for m in given["measurements"]]
    with open(target, "w") as out:
        json.dump({"marginals": marginals, "fit_s": fit_s}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
