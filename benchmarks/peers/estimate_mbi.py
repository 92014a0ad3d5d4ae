"""Fit noisy marginals with Private-PGM's estimator (mbi 2.0 `MirrorDescent`) and write
the fitted model's marginals of the measured cliques; run by the mbi peer's interpreter.

    estimate_mbi.py IN OUT.json [ITERATIONS]

IN is a folder that `pet synth export` wrote (format `pet-marginals/1`: another
generator training on pet's noisy marginals), or a JSON file {"attributes": [...],
"sizes": [...], "total": N, "measurements": [{"clique": [...], "values": [...], "sd":
[...]}, ...]}, values flat in C order, one noise sd per cell. A cell's measurement is
weighted by its own sd (mbi's loss divides by one σ per measurement, so each is rescaled
to its smallest sd with a weighted query). The total is given, so both estimators fit the
same objective. OUT.json: {"marginals":
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


def exported(folder: Path) -> dict:
    """A `pet-marginals/1` folder in the JSON form above: each measurement's cells put
    back in C order over its clique by their levels."""
    import pyarrow.parquet as pq

    described = json.loads((folder / "marginals.json").read_text())
    if described.get("format") != "pet-marginals/1":
        raise SystemExit(f"{folder}: format {described.get('format')!r}, not pet-marginals/1")
    sizes = {c["name"]: len(c["levels"]) for c in described["columns"]}
    cells = pq.read_table(folder / "marginals.parquet").to_pydict()
    measurements = []
    for m in described["measurements"]:
        shape = [sizes[a] for a in m["clique"]]
        values, sd = np.zeros(int(np.prod(shape))), np.full(int(np.prod(shape)), m["sigma"])
        rows = [i for i, k in enumerate(cells["measurement"]) if k == m["id"]]
        flat = np.ravel_multi_index([[cells[a][i] for i in rows] for a in m["clique"]], shape)
        values[flat] = [cells["count"][i] for i in rows]
        sd[flat] = [cells["sd"][i] for i in rows]
        measurements.append({"clique": m["clique"], "values": values, "sd": sd})
    return {"attributes": list(sizes), "sizes": list(sizes.values()),
            "total": described["records"], "measurements": measurements}


def main(argv: list[str]) -> int:
    source, target = Path(argv[1]), argv[2]
    iterations = int(argv[3]) if len(argv) > 3 else 10_000
    given = exported(source) if source.is_dir() else json.loads(source.read_text())
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
