"""The demo study: lung cancer patients at three sites, every question asked under
every backend, with disclosure control at each site."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pet.backends import BACKENDS, backend_class
from pet.errors import PetError
from pet.queries import (
    Contingency,
    Correlation,
    Count,
    ExactQuantiles,
    Histogram,
    KaplanMeier,
    LinearRegression,
    LogisticRegression,
    Mean,
    Query,
    StdDev,
)
from pet.report import RESULT_HEADERS, result_row, table
from pet.result import Result
from pet.study import Study
from pet.workloads import Workload, lung

QUESTIONS: tuple[Query, ...] = (
    Count(),
    Count(where="sex == 'female' and age >= 60"),
    Mean("age"),
    StdDev("wt_loss"),
    ExactQuantiles("age", (0.5,)),
    Histogram("age", (18, 50, 60, 70, 100)),
    Contingency(("sex", "dead")),
    Correlation(("age", "ph_karno", "wt_loss")),
    LinearRegression("wt_loss", ("age", "sex", "ph_ecog")),
    LogisticRegression("dead", ("age", "sex", "ph_ecog")),
    KaplanMeier("time", "dead", grid=(182, 365, 547, 1100)),
    # Ten-year age bins leave fewer than 3 patients in some cell at some site: disclosure
    # control refuses, and the demo shows how.
    Histogram("age", tuple(range(10, 111, 10))),
)


def run_demo(n_sites: int = 3) -> str:
    """Run the demo study under every backend and return its report as text."""
    workload = lung(n_sites)
    lines = [f"pet demo: {workload.description}.",
             "Every site applies disclosure control (minimum cell count 3).", ""]
    with tempfile.TemporaryDirectory(prefix="pet-demo-") as ledgers:
        for backend in BACKENDS:
            lines += _run_backend(workload, backend, Path(ledgers) / backend)
    return "\n".join(lines)


DEMO_BUDGET, DEMO_DELTA = 50.0, 1e-4
"""Each site's (ε, δ) budget under each of the demo's DP backends (every question at
ε = 1 per round, δ = 10⁻⁶ where Gaussian; logistic regression charges its 25 possible
rounds up front)."""


def _run_backend(workload: Workload, backend: str, ledgers: Path) -> list[str]:
    """The demo's questions under one backend, as report lines; under DP every site keeps
    a ledger with DEMO_BUDGET, printed after the answers."""
    sites = workload.sites(ledgers=ledgers)
    private = backend_class(backend).differentially_private
    if private:
        for site in sites:
            site.ledger.set_budget(site.dataset, DEMO_BUDGET, DEMO_DELTA)
    with Study(sites, backend=backend) as study:
        rows, results = [], []
        for query in QUESTIONS:
            try:
                results.append(study.run(query))
            except PetError as refusal:
                rows.append([query.describe(), f"REFUSED: {refusal}", "", "", "", "", ""])
                continue
            rows.append(result_row(results[-1]))
        lines = [_backend_line(study, results), "", table(rows, RESULT_HEADERS), ""]
    if private:
        spent = ", ".join(f"{site.name} ε {site.ledger.budget(site.dataset).spent_epsilon:g}"
                          f" of {DEMO_BUDGET:g}" for site in sites)
        lines += [f"Privacy ledgers after the {backend} study: {spent}.", ""]
    return lines


def _backend_line(study: Study, results: list[Result]) -> str:
    """What a backend protects (per kind of answer where that differs: MPC finalizes some
    statistics inside the computation), and what its session cost before any query."""
    backend = study.backend
    if not results:
        return f"backend {backend.name}: every question was refused"
    privacy = results[-1].privacy
    kinds: dict[str, list[str]] = {}
    for result in results:
        kinds.setdefault(result.privacy.confidentiality, []).append(result.query)
    common, *others = sorted(kinds, key=lambda text: -len(kinds[text]))
    protects = "; ".join([common, *(f"for {', '.join(kinds[text])}: {text}" for text in others)])
    setup = []
    if backend.session_bytes:
        setup.append(f"{backend.session_bytes:,} bytes of keys sent once")
    if backend.startup_s >= 0.1:
        setup.append(f"{backend.startup_s:.1f} s to start the session")
    extra = f" (session: {', '.join(setup)})" if setup else ""
    return (f"backend {backend.name} — confidentiality: {protects}; "
            f"differential privacy: {privacy}{extra}")
