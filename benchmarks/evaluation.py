"""Synthesizer cells: pet's MST and AIM on each health workload at each ε, fitted to 70%
of the rows and evaluated (`pet.evaluate`) against them and the 30% held out: fit and
sample time, fidelity, utility and privacy risk, one JSON line a cell.

    python -m benchmarks.evaluation --out benchmarks/results/evaluation
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pet.evaluate import evaluate, split
from pet.ledger import Ledger
from pet.site import Site
from pet.synth import SYNTHESIZERS, Curator, Discretization
from pet.table import FrameTable
from pet.workloads import Workload, breast_cancer, cohort, lung

DELTA = 1e-6
EPSILONS = (0.5, 1.0, 5.0)
METHODS = ("mst", "aim")
TRAIN_SHARE = 0.7
DATA_DIR = Path("benchmarks/.data")

DATASETS: dict[str, Callable[[], Workload]] = {
    "breast_cancer": lambda: breast_cancer(1),
    "lung": lambda: lung(1),
    "cohort": lambda: cohort(20_000, 1, 0, directory=DATA_DIR / "evaluation-20k", reuse=True),
}
"""Each workload as one data holder's rows (central DP); the cohort at 20 000 patients."""

KEPT = ("fit_s", "sample_s", "rho", "tvd1", "tvd2", "tvd3", "correlation_gap_max",
        "auc_real", "auc_synthetic", "same_sign", "ci_overlap", "survival_gap",
        "mia_advantage", "dcr_excess", "singling out risk", "linkability risk",
        "attribute inference risk", "max_risk_high", "train_rows", "holdout_rows")


def cell(dataset: str, method: str, epsilon: float, seed: int = 0) -> dict[str, Any]:
    """Split, fit on the training rows, sample as many, evaluate."""
    workload = DATASETS[dataset]()
    train, holdout = split(workload.pooled(), TRAIN_SHARE, seed)
    with tempfile.TemporaryDirectory() as folder:
        site = Site(dataset, FrameTable(train, workload.schema),
                    ledger=Ledger(Path(folder) / "ledger.sqlite"))
        site.ledger.set_budget(site.dataset, epsilon, DELTA)
        start = time.perf_counter()
        with Curator(site, Discretization.of(workload.schema), epsilon=epsilon,
                     delta=DELTA) as measurer:
            fit = SYNTHESIZERS[method]().fit(measurer)
        fitted = time.perf_counter()
        synthetic = fit.sample(len(train), seed=seed)
        sampled = time.perf_counter()
    evaluation = evaluate(train, holdout, synthetic, workload.schema, seed=seed)
    found = {"fit_s": fitted - start, "sample_s": sampled - fitted, "rho": fit.rho,
             **evaluation.summary()}
    grades = {v.pillar.lower(): v.grade for v in evaluation.verdicts()}
    return {"dataset": dataset, "method": method, "epsilon": epsilon,
            **{k: found.get(k) for k in KEPT}, "grades": grades}


def run(out: Path, datasets: list[str], methods: list[str], epsilons: list[float]) -> Path:
    """Run (or resume) every cell into `out/cells.jsonl`, then write `out/summary.md`."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cells.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["dataset"], r["method"], r["epsilon"]) for r in rows}
    for dataset in datasets:
        for method in methods:
            for epsilon in epsilons:
                if (dataset, method, epsilon) in done:
                    continue
                row = cell(dataset, method, epsilon)
                with log.open("a") as f:
                    f.write(json.dumps(_plain(row)) + "\n")
                print(json.dumps({k: row[k] for k in ("dataset", "method", "epsilon",
                                                      "fit_s", "tvd2", "grades")}), flush=True)
    (out / "summary.md").write_text(summary(log))
    return log


def summary(log: Path) -> str:
    """The cells as a Markdown table."""
    lines = ["| data | method | ε | fit | sample | 2-way TVD | AUC synthetic / real | "
             "same sign | membership advantage | DCR excess | worst attack risk (95% high) "
             "| verdicts |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for line in log.read_text().splitlines():
        r = json.loads(line)
        grades = ", ".join(r["grades"].values())
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['epsilon']:g} | {r['fit_s']:.1f} s | "
            f"{r['sample_s']:.2f} s | {r['tvd2']:.3f} | {r['auc_synthetic']:.2f} / "
            f"{r['auc_real']:.2f} | {_share(r['same_sign'])} | {r['mia_advantage']:.2f} | "
            f"{r['dcr_excess']:.2f} | {r['max_risk_high']:.2f} | {grades} |")
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Floats for JSON; NaN as null."""
    return {k: (None if isinstance(v, float) and v != v else
                float(v) if hasattr(v, "dtype") else v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/evaluation"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS))
    args = parser.parse_args(argv)
    run(args.out, args.datasets, args.methods, args.epsilons)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
