"""The estimators alone: the same noisy measurements fitted by pet's estimator and by
Private-PGM's (mbi 2.0 `MirrorDescent`, in the mbi peer's environment).

For each held-out table, method and ε, pet fits once (MST or AIM through a curator);
its measurements and the number of records its model took are then fitted again by mbi
(10 000 iterations, the reference MST's final fit) and by pet with 10 000 iterations.
Each fit's loss is ½ Σ ((μ − y) / sd)² over every measured cell, computed here from the
fitted marginals, so all are scored alike; the marginals are compared cell by cell in
units of the cell's noise sd.

    python -m benchmarks.estimator --out benchmarks/results/estimator
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import driver
from benchmarks.synth import DATASETS, HELDOUT
from pet.synth import SYNTHESIZERS, Curator, Discretization, estimate
from pet.synth.marginal import NoisyMarginal

ESTIMATE_MBI = Path(__file__).resolve().parent / "peers" / "estimate_mbi.py"
ITERATIONS = 10_000
DELTA = 1e-9


def loss(marginals: list[np.ndarray], measured: tuple[NoisyMarginal, ...]) -> float:
    """½ Σ ((μ − y) / sd)² over every measured cell."""
    return 0.5 * float(sum((((np.ravel(mu) - m.values) / m.sd) ** 2).sum()
                           for mu, m in zip(marginals, measured, strict=True)))


def cell(dataset: str, method: str, epsilon: float, folder: Path) -> dict[str, Any]:
    """pet's fit, then the same measurements refitted by pet (longer) and by mbi."""
    workload = DATASETS[dataset]()
    (site,) = workload.sites(ledgers=folder)
    site.ledger.set_budget(site.dataset, epsilon, DELTA)
    with Curator(site, Discretization.of(workload.schema), epsilon=epsilon,
                 delta=DELTA) as measurer:
        fit = SYNTHESIZERS[method]().fit(measurer)
    measured, domain, total = fit.measurements, fit.discretization.domain(), fit.model.total
    cliques = [m.clique for m in measured]
    longer = estimate(domain, list(measured), iterations=ITERATIONS, total=total)
    given = {"attributes": list(domain.attributes), "sizes": list(domain.sizes),
             "total": total,
             "measurements": [{"clique": list(m.clique), "values": m.values.tolist(),
                               "sd": np.broadcast_to(m.sd, m.values.shape).tolist()}
                              for m in measured]}
    (folder / "in.json").write_text(json.dumps(given))
    subprocess.run([str(driver.peer_python("mbi")), str(ESTIMATE_MBI), str(folder / "in.json"),
                    str(folder / "out.json"), str(ITERATIONS)], check=True,
                   env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, capture_output=True)
    mbi = [np.asarray(m) for m in json.loads((folder / "out.json").read_text())["marginals"]]
    fits = {"pet": [fit.model.project(c) for c in cliques],
            "pet_long": [longer.project(c) for c in cliques], "mbi": mbi}
    apart = np.concatenate([np.abs(np.ravel(a) - b) / m.sd
                            for a, b, m in zip(fits["pet"], mbi, measured, strict=True)])
    return {"dataset": dataset, "method": method, "epsilon": epsilon,
            "measurements": len(measured), "cells": int(sum(m.values.size for m in measured)),
            **{f"loss_{name}": loss(marginals, measured) for name, marginals in fits.items()},
            "max_apart_sd": float(apart.max()), "mean_apart_sd": float(apart.mean())}


def summary(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| data | method | ε | measurements | cells | loss, pet (its iterations) | "
             "loss, pet (10 000) | loss, mbi 2.0 (10 000) | marginals apart, max / mean (sd) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['method']} | {r['epsilon']:g} | {r['measurements']} | "
              f"{r['cells']} | {r['loss_pet']:.2f} | {r['loss_pet_long']:.2f} | "
              f"{r['loss_mbi']:.2f} | {r['max_apart_sd']:.3f} / {r['mean_apart_sd']:.4f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/estimator"))
    parser.add_argument("--datasets", nargs="+", default=[*HELDOUT, "lung"])
    parser.add_argument("--methods", nargs="+", default=["mst", "aim"])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[0.3, 1.0, 3.0])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.datasets:
        for method in args.methods:
            for epsilon in args.epsilons:
                with tempfile.TemporaryDirectory() as folder:
                    rows.append(cell(dataset, method, epsilon, Path(folder)))
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "summary.md").write_text(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
