"""The demo study: lung cancer patients at three sites, every question asked under
every backend, with disclosure control at each site."""

from __future__ import annotations

from pet.backends import BACKENDS
from pet.errors import PetError
from pet.queries import (
    Contingency,
    Correlation,
    Count,
    Histogram,
    KaplanMeier,
    LinearRegression,
    LogisticRegression,
    Mean,
    Query,
    StdDev,
)
from pet.report import RESULT_HEADERS, result_row, table
from pet.workloads import lung

QUESTIONS: tuple[Query, ...] = (
    Count(),
    Count(where="sex == 'female' and age >= 60"),
    Mean("age"),
    StdDev("wt_loss"),
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
    """Run the demo study and return its report as text."""
    workload = lung(n_sites)
    lines = [f"pet demo: {workload.description}.",
             "Every site applies disclosure control (minimum cell count 3).", ""]
    for backend in BACKENDS:
        study = workload.study(backend)
        rows = []
        for query in QUESTIONS:
            try:
                result = study.run(query)
            except PetError as refusal:
                rows.append([query.describe(), f"REFUSED: {refusal}", "", "", "", "", ""])
                continue
            rows.append(result_row(result))
        privacy = result.privacy
        setup = (f"; {study.backend.session_bytes:,} bytes of keys sent once per session"
                 if study.backend.session_bytes else "")
        lines += [f"backend {backend} — confidentiality: {privacy.confidentiality}; "
                  f"differential privacy: {privacy}{setup}", "",
                  table(rows, RESULT_HEADERS), ""]
    return "\n".join(lines)
