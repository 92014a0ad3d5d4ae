"""The smallest cohort at which a DP answer is within 10% of the exact one.

For each query of the `cohort` preset that DP answers and each DP backend, at ε = 1
(δ = 10⁻⁶) and 3 sites, `DRAWS` noisy answers are compared with plaintext's answer on the
same rows at every size in `SIZES` rows per site. A size is *within* when the median
error over the draws is at most the query's limit: 0.10 relative error (the harness's
max-norm measure) for most queries, 0.05 absolute error for correlations and survival
curves, whose numbers already lie in [-1, 1]. A draw that is refused, fails or answers
NaN has infinite error. The table reports the smallest size from which every larger
measured size is within too, so that one lucky size below a failing one does not count.

    python -m benchmarks.cohort_size --out benchmarks/results/cohort-size --label after

Each label's measurements go into `results.json` beside the other labels' (a `before`
run of older code and an `after` run), and `summary.md` shows them side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import pet
from benchmarks.harness import COHORT_SEED, OPEN, _sites, machine_info
from benchmarks.queries import preset
from pet.backends import get_backend
from pet.result import answer_vector
from pet.study import Study
from pet.workloads import cohort

SIZES = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
QUERIES = ("count", "mean", "variance", "histogram", "contingency", "quantiles",
           "correlation", "linear", "logistic", "kaplan_meier")
BACKENDS = ("dp", "he+dp", "mpc+dp")
EPSILON, DELTA, SITES, DRAWS = 1.0, 1e-6, 3, 21

RELATIVE_LIMIT = 0.10
ABSOLUTE_LIMITS = {"correlation": 0.05, "kaplan_meier": 0.05}
"""Queries judged by their largest absolute error instead of the relative one."""


def error(query: str, answer: np.ndarray, reference: np.ndarray) -> float:
    """One draw's error: the largest absolute difference, divided by the largest exact
    number unless the query is judged in absolute terms (as `harness._errors` does);
    NaN, or an answer of the wrong shape, is infinite."""
    if answer.shape != reference.shape:
        return math.inf
    worst = float(np.max(np.abs(answer - reference), initial=0.0))
    if not math.isfinite(worst):
        return math.inf
    if query in ABSOLUTE_LIMITS:
        return worst
    scale = float(np.max(np.abs(reference), initial=0.0))
    return worst / scale if scale else (0.0 if worst == 0 else math.inf)


def limit(query: str) -> float:
    """The largest median error at which the query counts as within."""
    return ABSOLUTE_LIMITS.get(query, RELATIVE_LIMIT)


def within(query: str, errors: Sequence[float]) -> bool:
    """Whether the median of the draws' errors is within the query's limit."""
    cleaned = [e if e is not None and math.isfinite(e) else math.inf for e in errors]
    return bool(cleaned) and float(np.median(cleaned)) <= limit(query)


def smallest(query: str, errors_by_size: Mapping[int, Sequence[float]]) -> int | None:
    """The smallest size from which on every measured size is within; None if the
    largest is not."""
    found = None
    for size in sorted(errors_by_size, reverse=True):
        if not within(query, errors_by_size[size]):
            break
        found = size
    return found


def measure(size: int, backend: str, *, draws: int) -> list[dict[str, Any]]:
    """Every query's draws under one backend on `size` rows per site at each of the sites
    (one study, so an MPC session starts once)."""
    workload = cohort(size, SITES, COHORT_SEED)
    plain = workload.study("plaintext", policy=OPEN)
    references = {name: answer_vector(plain.run(preset("cohort", name)).value)
                  for name in QUERIES}
    records = []
    with tempfile.TemporaryDirectory(prefix="pet-cohort-size-") as folder:
        private = get_backend(backend, epsilon=EPSILON, delta=DELTA)
        with Study(_sites(workload, private, Path(folder)), backend=private) as study:
            for name in QUERIES:
                errors, failures = [], []
                for _ in range(draws):
                    try:
                        answer = answer_vector(study.run(preset("cohort", name)).value)
                        errors.append(error(name, answer, references[name]))
                        if not np.all(np.isfinite(answer)):
                            failures.append("an answer with NaN or infinite numbers")
                    except Exception as exc:  # a refused or failed draw is not within
                        errors.append(math.inf)
                        failures.append(f"{type(exc).__name__}: {exc}")
                records.append({"query": name, "backend": backend, "rows_per_site": size,
                                "errors": errors, "failures": failures,
                                "within": within(name, errors)})
    return records


def run(backends: Sequence[str], *, draws: int) -> dict[str, Any]:
    """Measure every (backend, size); the smallest size per query and backend."""
    start = time.perf_counter()
    records = []
    for backend in backends:
        for size in SIZES:
            began = time.perf_counter()
            records += measure(size, backend, draws=draws)
            print(f"{backend} at {size:,} rows/site: {time.perf_counter() - began:.1f} s",
                  flush=True)
    table = {query: {backend: smallest(query, {
        r["rows_per_site"]: r["errors"] for r in records
        if r["query"] == query and r["backend"] == backend}) for backend in backends}
        for query in QUERIES}
    return {"pet": str(Path(pet.__file__).parent), "commit": _commit(),
            "epsilon": EPSILON, "delta": DELTA, "sites": SITES, "draws": draws,
            "seed": COHORT_SEED, "seconds": round(time.perf_counter() - start, 1),
            "machine": machine_info(), "smallest": table,
            "measurements": [{**r, "errors": [_jsonable(e) for e in r["errors"]]}
                             for r in records]}


def _commit() -> str:
    """The commit of the pet being measured, with a mark when its tree has changes."""
    folder = Path(pet.__file__).parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pet"], cwd=folder.parent,
                           capture_output=True, text=True).stdout.strip()
    return f"{head}+changes" if dirty else head


def _jsonable(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


def summary(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: for each query and backend, the smallest size under each label."""
    labels = sorted(runs, key=lambda label: (label != "before", label != "after", label))
    backends = [b for b in BACKENDS if any(b in r["smallest"]["count"] for r in runs.values())]
    header = ["query", "within", *(f"{b} {label}" for b in backends for label in labels)]
    lines = [
        "# Smallest cohort within 10% under DP", "",
        f"ε = {EPSILON:g}, δ = 10⁻⁶, {SITES} sites, `cohort` data; rows per site from "
        f"{', '.join(f'{s:,}' for s in SIZES)}. Median over the draws of each answer's "
        "error against plaintext's on the same rows; a refused or NaN draw counts as "
        "infinite. A cell is the smallest size from which every larger size is within "
        "too (`python -m benchmarks.cohort_size`; every error is in results.json).", "",
    ]
    for label in labels:
        result = runs[label]
        lines.append(f"- **{label}**: pet at commit {result['commit']}, {result['draws']} "
                     f"draws, {result['seconds']:.0f} s")
    lines += ["", "| " + " | ".join(header) + " |",
              "|---|---|" + "---:|" * (len(header) - 2)]
    for query in QUERIES:
        criterion = (f"abs ≤ {limit(query):g}" if query in ABSOLUTE_LIMITS
                     else f"rel ≤ {limit(query):g}")
        cells = [_size(runs[label]["smallest"].get(query, {}).get(b, "—"))
                 for b in backends for label in labels]
        lines.append(f"| {query} | {criterion} | " + " | ".join(cells) + " |")
    for label in labels:
        lines += ["", f"## Refused or failed draws, {label}", "", *_failures(runs[label])]
    return "\n".join(lines) + "\n"


def _failures(result: Mapping[str, Any]) -> list[str]:
    """One line per query, backend and kind of failure, with the sizes where it struck."""
    sizes: dict[tuple[str, str, str], Counter[int]] = {}
    for record in result["measurements"]:
        for failure in record["failures"]:
            kind = re.sub(r"'[0-9a-f]{32}'", "…", failure)  # request ids differ per draw
            sizes.setdefault((record["query"], record["backend"], kind), Counter())[
                record["rows_per_site"]] += 1
    return [f"- {query} / {backend}: {kind} (draws at each size: "
            f"{', '.join(f'{n:,}: {k}' for n, k in sorted(found.items()))})"
            for (query, backend, kind), found in sizes.items()] or ["- none"]


def _size(size: int | str | None) -> str:
    if size is None:
        return f"> {SIZES[-1]:,}"
    return size if isinstance(size, str) else f"{size:,}"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure under this label, keep the other labels' results, rewrite the summary."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cohort_size",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--label", default="after", help="name of this run (before, after)")
    parser.add_argument("--draws", type=int, default=DRAWS, help="noisy answers per size")
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    args = parser.parse_args(argv)
    print(f"measuring pet from {Path(pet.__file__).parent}", flush=True)
    path = args.out / "results.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[args.label] = run(args.backends, draws=args.draws)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1, ensure_ascii=False))
    (args.out / "summary.md").write_text(summary(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
